//! The fake providers of `easel_upstream::testing` (OpenAI images, DashScope, chat) in a process
//! of their own, on loopback, for runs of the whole server such as the soak
//! (`scripts/soak/run.sh`).
//!
//! `fake_provider KEY` serves until killed, accepting `Authorization: Bearer KEY`, and prints
//! `listening http://127.0.0.1:PORT` on its first line of stdout. The fake records every request
//! for tests to read; here nobody reads them, so the record is emptied every second and a long
//! run keeps a flat memory.

use std::io::Write as _;
use std::time::Duration;

use easel_upstream::testing::Fake;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let key = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: fake_provider KEY"))?;
    let fake = Fake::start(&key).await;
    println!("listening {}", fake.url());
    std::io::stdout().flush()?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        fake.state.lock().map_err(|_| anyhow::anyhow!("the fake's state is poisoned"))?.log.clear();
    }
}

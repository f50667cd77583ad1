//! Per-key limits in the database, on SQLite and PostgreSQL: concurrent requests never both take
//! the last unit, settling charges what was delivered exactly once, and a reservation left by a
//! dead node is released by any node's sweep.

use std::time::Duration;

use easel_server::storage::db::Db;
use easel_server::storage::limits::{Counter, LimitError, Limiter, Limits};

fn limits(images: u64, tokens: u64) -> Limits {
    Limits { daily_images: Some(images), monthly_tokens: Some(tokens), ..Limits::default() }
}

async fn used_and_reserved(db: &Db, counter: Counter, now: i64) -> (i64, i64) {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT used, reserved FROM limit_counters WHERE key_id = 'k' AND counter = $1 AND window_start = $2",
    )
    .bind(counter.name())
    .bind(counter.window(now).0)
    .fetch_one(db)
    .await
    .unwrap();
    (row.get("used"), row.get("reserved"))
}

/// Twenty concurrent reservations of one image against a quota of seven: exactly seven pass.
async fn the_last_unit_goes_to_one_request(db: Db) {
    let limiter = Limiter::new(db.clone(), Duration::from_secs(60));
    let now = 1_800_000_000;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.reserve("k", &limits(7, 1_000_000), 1, 10, now).await })
        })
        .collect();
    let mut passed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok((Some(_), _)) => passed += 1,
            Err(LimitError::Exceeded(e)) => assert_eq!(e.standing.counter, Counter::ImagesPerDay),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(passed, 7);
    assert_eq!(used_and_reserved(&db, Counter::ImagesPerDay, now).await, (0, 7));
}

/// Settling moves the reservation to what was delivered, once; a second settle of the same
/// reservation (a retry, a confused caller) charges the delivery but releases nothing twice.
async fn settling_charges_what_was_delivered(db: Db) {
    let limiter = Limiter::new(db.clone(), Duration::from_secs(60));
    let now = 1_800_000_000;
    let (reservation, standings) = limiter.reserve("k", &limits(10, 1000), 4, 300, now).await.unwrap();
    let reservation = reservation.unwrap();
    assert_eq!(standings.iter().find(|s| s.counter == Counter::ImagesPerDay).unwrap().remaining, 6);
    limiter.settle("k", &reservation, 3, 250).await.unwrap();
    assert_eq!(used_and_reserved(&db, Counter::ImagesPerDay, now).await, (3, 0));
    assert_eq!(used_and_reserved(&db, Counter::TokensPerMonth, now).await, (250, 0));
    let (failed, _) = limiter.reserve("k", &limits(10, 1000), 2, 100, now).await.unwrap();
    limiter.release("k", &failed.unwrap()).await.unwrap();
    assert_eq!(used_and_reserved(&db, Counter::ImagesPerDay, now).await, (3, 0), "a failure charges nothing");
}

/// A node died holding a reservation: once it expires, any node's sweep gives it back, and the
/// dead request's late settle (had it lived) would not release it again.
async fn a_dead_nodes_reservation_expires(db: Db) {
    let limiter = Limiter::new(db.clone(), Duration::from_secs(60));
    let now = 1_800_000_000;
    let (reservation, _) = limiter.reserve("k", &limits(2, 1000), 2, 10, now).await.unwrap();
    assert!(matches!(limiter.reserve("k", &limits(2, 1000), 1, 10, now).await, Err(LimitError::Exceeded(_))));
    assert_eq!(limiter.sweep(now + 30).await.unwrap(), 0, "not expired yet");
    assert_eq!(limiter.sweep(now + 61).await.unwrap(), 1);
    assert_eq!(used_and_reserved(&db, Counter::ImagesPerDay, now).await, (0, 0));
    limiter.settle("k", &reservation.unwrap(), 2, 10).await.unwrap();
    assert_eq!(
        used_and_reserved(&db, Counter::ImagesPerDay, now).await,
        (2, 0),
        "delivered, charged, not released twice"
    );
}

/// Requests per minute count at arrival and reset with the minute.
async fn requests_per_minute_reset_each_minute(db: Db) {
    let limiter = Limiter::new(db, Duration::from_secs(60));
    let rpm = Limits { rpm: Some(2), ..Limits::default() };
    let now = 1_799_999_940; // the start of a minute
    limiter.admit("k", &rpm, now).await.unwrap();
    let standing = limiter.admit("k", &rpm, now + 1).await.unwrap()[0];
    assert_eq!((standing.limit, standing.remaining, standing.reset_secs), (2, 0, 59));
    let Err(LimitError::Exceeded(e)) = limiter.admit("k", &rpm, now + 2).await else {
        panic!("a third request passed")
    };
    assert!(e.message().contains("2 requests/minute"), "{}", e.message());
    limiter.admit("k", &rpm, now + 60).await.unwrap();
}

macro_rules! on_both {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let test = super::super::services::sqlite().await;
                super::$name(test.db.clone()).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(test) = super::super::services::postgres().await else { return };
                super::$name(test.db.clone()).await;
            }
        }
    )*};
}

on_both!(
    the_last_unit_goes_to_one_request,
    settling_charges_what_was_delivered,
    a_dead_nodes_reservation_expires,
    requests_per_minute_reset_each_minute
);

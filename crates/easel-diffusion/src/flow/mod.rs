//! Pieces shared by the flow-matching transformers (FLUX.1 in [`crate::flux`], Qwen-Image in
//! `crate::qwen`): the FlowMatch Euler schedule, 2×2 latent packing, multi-axis interleaved RoPE,
//! the sinusoidal timestep embedding, the adaptive-norm helpers, the joint attention over
//! `[text; image]` and the q/k/v and feed-forward layers of a double-stream block.
//!
//! Each follows diffusers to the rounding where that is cheap (RoPE frequencies in f64 and
//! rotations in f32, sigmas computed in f32 as numpy does), because parity with diffusers is how
//! this code is proven right (`new-families.md` §6 lists the traps).

pub mod attention;
pub mod blocks;
pub mod embed;
pub mod norm;
pub mod pack;
pub mod rope;
pub mod scheduler;

pub use attention::joint_attention;
pub use pack::{pack, unpack};
pub use rope::Rope;
pub use scheduler::{FlowConfig, FlowSchedule};

//! FLUX.1 schnell and dev, in diffusers' folder layout: CLIP-L pooled + T5 text encoders
//! ([`text`], [`t5`]), the transformer ([`transformer`]), the 16-channel KL VAE
//! ([`crate::vae`] with its shift), flow-matching Euler sampling ([`crate::flow`]); [`model`]
//! loads a folder, [`pipeline`] runs one batch, [`random`] and [`random_text`] write random ones.

pub mod model;
pub mod pipeline;
pub mod random;
pub mod random_text;
pub mod t5;
pub mod text;
pub mod transformer;

pub use model::{FluxLayout, FluxModel};

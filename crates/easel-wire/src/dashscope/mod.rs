//! DashScope's own protocol, for clients written against Alibaba's API (the `dashscope` SDKs,
//! wanx and Qwen-Image integrations) that point their base URL at Easel.
//!
//! Three request bodies ([`request`]): the async `text2image/image-synthesis` and
//! `image2image/image-synthesis` submits, and the sync `multimodal-generation/generation` call.
//! They are read by the Qwen `input.messages` parser the OpenAI routes already use (one reading of
//! `input` and `parameters` for every route), after the checks only DashScope's routes make.
//! The answers ([`response`]) and the error body ([`error`]) are DashScope's, field for field:
//! a client that parses DashScope's JSON parses Easel's.

pub mod error;
pub mod request;
pub mod response;

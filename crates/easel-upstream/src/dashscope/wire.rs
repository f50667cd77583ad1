//! DashScope's response bodies as serde types (request bodies are built as JSON values in the
//! protocol modules, since their shape varies by model).
//!
//! One type covers the task submit answer, the task poll answer and the sync multimodal answer:
//! they share `output`, `usage`, `request_id`, and the `code`/`message` pair DashScope uses for
//! errors, also inside HTTP 200.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub output: Option<Output>,
    #[serde(default)]
    pub usage: Option<UsageBody>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Output {
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub task_status: Option<String>,
    /// A failed task's reason.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Async results: one per image, a `url` or a per-item `code`/`message`.
    #[serde(default)]
    pub results: Option<Vec<TaskResult>>,
    /// Sync multimodal results.
    #[serde(default)]
    pub choices: Option<Vec<Choice>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TaskResult {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub actual_prompt: Option<String>,
    #[serde(default)]
    pub orig_prompt: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub content: Vec<ContentItem>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContentItem {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UsageBody {
    #[serde(default)]
    pub image_count: Option<u32>,
}

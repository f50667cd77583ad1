//! DashScope's answers: the task submit, the task poll (`GET /api/v1/tasks/{id}`), the cancel,
//! the task list (`GET /api/v1/tasks`), and the sync `multimodal-generation` answer, with DashScope's field names and status strings.
//! Absent fields are omitted, as DashScope omits them (a pending task has no `results`).

use serde::{Deserialize, Serialize};

/// A task's `task_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeTaskStatus))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Canceled,
    /// DashScope's answer for a task it does not know or that expired.
    Unknown,
}

/// The answer to a submit: `{"output": {"task_id", "task_status"}, "request_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeSubmitted))]
pub struct Submitted {
    pub output: SubmittedOutput,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmittedOutput {
    pub task_id: String,
    pub task_status: TaskStatus,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeTaskBody))]
pub struct TaskBody {
    pub request_id: String,
    pub output: TaskOutput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TaskUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskOutput {
    pub task_id: String,
    pub task_status: TaskStatus,
    /// `YYYY-MM-DD HH:MM:SS.mmm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<TaskResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_metrics: Option<TaskMetrics>,
    /// A failed task's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One image of a finished task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The prompt the image was made from, where it was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskMetrics {
    #[serde(rename = "TOTAL")]
    pub total: u32,
    #[serde(rename = "SUCCEEDED")]
    pub succeeded: u32,
    #[serde(rename = "FAILED")]
    pub failed: u32,
}

/// Only the images delivered are counted (and billed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskUsage {
    pub image_count: u32,
}

/// The answer to a cancel that was accepted: `{"request_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeCanceled))]
pub struct Canceled {
    pub request_id: String,
}

/// The answer to a task list (`GET /api/v1/tasks?page_no=&page_size=...`): one page of the
/// caller's tasks, newest first, and the number of tasks (`total`) and pages (`total_page`)
/// matching the query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeTaskList))]
pub struct TaskList {
    pub request_id: String,
    pub data: Vec<TaskSummary>,
    pub total: u64,
    pub total_page: u64,
    pub page_no: u32,
    pub page_size: u32,
}

/// One task of a list; times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeTaskSummary))]
pub struct TaskSummary {
    pub task_id: String,
    pub status: TaskStatus,
    pub model_name: String,
    /// When the task was submitted.
    pub gmt_create: i64,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
}

/// The sync `multimodal-generation` answer: every image in one choice's `content`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultimodalBody {
    pub output: MultimodalOutput,
    pub usage: MultimodalUsage,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultimodalOutput {
    pub choices: Vec<Choice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Choice {
    pub finish_reason: String,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DashScopeMessage))]
pub struct Message {
    pub role: String,
    pub content: Vec<ContentItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentItem {
    pub image: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultimodalUsage {
    pub image_count: u32,
    pub width: u32,
    pub height: u32,
}

impl MultimodalBody {
    /// The answer holding `urls`, images of `width` × `height`.
    pub fn new(urls: Vec<String>, width: u32, height: u32, request_id: impl Into<String>) -> Self {
        let image_count = urls.len() as u32;
        let content = urls.into_iter().map(|image| ContentItem { image, kind: "image".into() }).collect();
        Self {
            output: MultimodalOutput {
                choices: vec![Choice {
                    finish_reason: "stop".into(),
                    message: Message { role: "assistant".into(), content },
                }],
            },
            usage: MultimodalUsage { image_count, width, height },
            request_id: request_id.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The bodies of upstream-providers.md §3.1 and §3.2, as Easel writes them.
    #[test]
    fn bodies_as_documented() {
        let submitted = Submitted {
            output: SubmittedOutput { task_id: "t-1".into(), task_status: TaskStatus::Pending },
            request_id: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&submitted).unwrap(),
            json!({"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r"})
        );
        let polled = TaskBody {
            request_id: "r".into(),
            output: TaskOutput {
                task_id: "t-1".into(),
                task_status: TaskStatus::Succeeded,
                submit_time: Some("2025-09-23 22:14:10.800".into()),
                scheduled_time: None,
                end_time: None,
                results: Some(vec![TaskResult { url: Some("https://x/a.png".into()), actual_prompt: None }]),
                task_metrics: Some(TaskMetrics { total: 1, succeeded: 1, failed: 0 }),
                code: None,
                message: None,
            },
            usage: Some(TaskUsage { image_count: 1 }),
        };
        assert_eq!(
            serde_json::to_value(&polled).unwrap(),
            json!({"request_id": "r", "output": {"task_id": "t-1", "task_status": "SUCCEEDED",
                   "submit_time": "2025-09-23 22:14:10.800", "results": [{"url": "https://x/a.png"}],
                   "task_metrics": {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}}, "usage": {"image_count": 1}})
        );
        let list = TaskList {
            request_id: "r".into(),
            data: vec![TaskSummary {
                task_id: "t-1".into(),
                status: TaskStatus::Running,
                model_name: "wanx-v1".into(),
                gmt_create: 1_731_569_380_000,
                start_time: Some(1_731_569_381_000),
                end_time: None,
            }],
            total: 11,
            total_page: 2,
            page_no: 1,
            page_size: 10,
        };
        assert_eq!(
            serde_json::to_value(&list).unwrap(),
            json!({"request_id": "r", "data": [{"task_id": "t-1", "status": "RUNNING", "model_name": "wanx-v1",
                   "gmt_create": 1_731_569_380_000_i64, "start_time": 1_731_569_381_000_i64}],
                   "total": 11, "total_page": 2, "page_no": 1, "page_size": 10})
        );
        let sync = MultimodalBody::new(vec!["https://x/a.png".into()], 1328, 1328, "r");
        assert_eq!(
            serde_json::to_value(&sync).unwrap(),
            json!({"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant",
                   "content": [{"image": "https://x/a.png", "type": "image"}]}}]},
                   "usage": {"image_count": 1, "width": 1328, "height": 1328}, "request_id": "r"})
        );
    }

    #[test]
    fn every_status_string() {
        let all = [
            (TaskStatus::Pending, "PENDING"),
            (TaskStatus::Running, "RUNNING"),
            (TaskStatus::Succeeded, "SUCCEEDED"),
            (TaskStatus::Failed, "FAILED"),
            (TaskStatus::Canceled, "CANCELED"),
            (TaskStatus::Unknown, "UNKNOWN"),
        ];
        for (status, text) in all {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(text));
        }
    }
}

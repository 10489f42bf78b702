//! The tutorials' worker service for master/worker in push mode (SEEDS §3), shared by the
//! cluster examples and tests: `WorkerService.DoTask` upper-cases a task's text and replies
//! with the worker's id.

#![allow(dead_code, unreachable_pub)] // included by path; each user needs part of it

use std::time::Duration;

use netrpc::{service, ServiceError};
use serde::{Deserialize, Serialize};

/// A task (Go: `type Task struct { ID int; Text string }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// The task's number.
    pub id: u64,
    /// The text to process.
    pub text: String,
}

/// A worker's reply (Go: `type TaskResult struct { WorkerID string; Result string }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskReply {
    /// Who did the work.
    pub worker_id: String,
    /// The upper-cased text.
    pub result: String,
}

service! {
    /// A worker of the push-mode master.
    pub trait WorkerService {
        const NAME = "WorkerService";
        type Server = WorkerServiceServer;
        type Client = WorkerServiceClient;

        /// Upper-cases the task's text; replies with the worker's id.
        #[rpc(name = "DoTask", go = do_task_go, const = DO_TASK)]
        fn do_task(task: Task) -> TaskReply;
    }
}

/// A worker with an id, taking `delay` per task (zero for the plain tutorial worker).
#[derive(Debug, Clone)]
pub struct Worker {
    /// The id it replies with.
    pub id: String,
    /// Time each task takes.
    pub delay: Duration,
}

impl Worker {
    /// A worker that answers at once.
    pub fn new(id: impl Into<String>) -> Self {
        Worker {
            id: id.into(),
            delay: Duration::ZERO,
        }
    }
}

impl WorkerService for Worker {
    fn do_task(&self, task: Task) -> Result<TaskReply, ServiceError> {
        std::thread::sleep(self.delay);
        Ok(TaskReply {
            worker_id: self.id.clone(),
            result: task.text.to_uppercase(),
        })
    }
}

/// The tutorial's tasks: `count` short texts.
pub fn tutorial_tasks(count: u64) -> Vec<Task> {
    (0..count)
        .map(|id| Task {
            id,
            text: format!("task number {id}"),
        })
        .collect()
}

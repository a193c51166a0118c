//! Statements sent back to back, answers read in order: one round trip for a
//! run of statements instead of one (or two, with a prepare) per statement.
//!
//! ```text
//!  client ── BEGIN · stmt 1 · stmt 2 · COMMIT ──▶ server      (one write)
//!  client ◀── ok · ok · ok · ok ───────────────── server      (one read)
//! ```
//!
//! - tokio-postgres puts a request on the wire the first time its future is
//!   polled, as long as the request needs no earlier answer: simple queries,
//!   prepared statements and typed queries (`query_typed`, `execute_typed`),
//!   not `query(&str)`, which prepares first. [`in_order`] polls every future
//!   once, first to last, before it waits for any, so they go out in order,
//!   and Postgres answers in the order it received them.
//! - Errors: each extended-protocol request ends with its own Sync, so a
//!   failing statement does not swallow the ones after it. Inside an explicit
//!   transaction they fail with 25P02 ("current transaction is aborted") and
//!   a trailing `COMMIT` rolls back. The first error in order is the cause
//!   (a lost race, a bad row), so that is the one returned; an `Ok` means
//!   every statement, the `COMMIT` included, succeeded.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// One statement of a flight, as a future that sends it on its first poll.
pub type Step<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// Runs `steps` sent back to back; their outputs in order, or the first
/// error in order (every step still runs to its answer, so the session is
/// left with nothing unread).
pub async fn in_order<T, E>(mut steps: Vec<Step<'_, T, E>>) -> Result<Vec<T>, E> {
    let mut answers: Vec<Option<Result<T, E>>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (step, answer) in steps.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match step.as_mut().poll(cx) {
                    Poll::Ready(r) => *answer = Some(r),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    answers.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A step that records when it was first polled ("sent") and finishes
    /// only after `yields` further polls, like a request awaiting its answer.
    fn step(
        log: Arc<Mutex<Vec<String>>>,
        name: &'static str,
        yields: u32,
        out: Result<u32, &'static str>,
    ) -> Step<'static, u32, &'static str> {
        Box::pin(async move {
            log.lock().unwrap().push(format!("send {name}"));
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            log.lock().unwrap().push(format!("answer {name}"));
            out
        })
    }

    #[tokio::test]
    async fn every_step_is_sent_in_order_before_any_answer_is_awaited() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = in_order(vec![
            step(log.clone(), "a", 2, Ok(1)),
            step(log.clone(), "b", 0, Ok(2)),
            step(log.clone(), "c", 1, Ok(3)),
        ])
        .await;
        assert_eq!(out, Ok(vec![1, 2, 3]));
        let log = log.lock().unwrap().clone();
        assert_eq!(&log[..2], ["send a", "send b"], "{log:?}");
        // b answers at once (it needs no wait), but c is still sent before a
        // is awaited any further.
        let sent_c = log.iter().position(|l| l == "send c").unwrap();
        let answer_a = log.iter().position(|l| l == "answer a").unwrap();
        assert!(sent_c < answer_a, "{log:?}");
    }

    #[tokio::test]
    async fn the_first_error_in_order_wins_and_every_step_still_runs() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = in_order(vec![
            step(log.clone(), "a", 0, Ok(1)),
            step(log.clone(), "b", 3, Err("b failed")),
            step(log.clone(), "c", 0, Err("c failed")),
            step(log.clone(), "d", 1, Ok(4)),
        ])
        .await;
        assert_eq!(out, Err("b failed"));
        let log = log.lock().unwrap();
        for name in ["a", "b", "c", "d"] {
            assert!(log.contains(&format!("answer {name}")), "{log:?}");
        }
    }

    #[tokio::test]
    async fn no_steps_is_nothing_to_do() {
        assert_eq!(in_order::<u32, ()>(Vec::new()).await, Ok(vec![]));
    }
}

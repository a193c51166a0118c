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
//! - A step can also fail on the client before it is sent (a value that does
//!   not encode as its declared type). The server would not see that error,
//!   so a `COMMIT` sent after it would commit the rest. A step that fails at
//!   its first poll therefore ends the pipeline: the steps after it are never
//!   sent, and [`Failed::unsent`] tells the caller its transaction is still
//!   open and wants a `ROLLBACK`.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// One statement of a pipeline, as a future that sends it on its first poll.
pub type Step<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// Why a pipeline failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed<E> {
    /// The first error in order.
    pub error: E,
    /// Steps never sent, because one before them failed at its first poll.
    /// Not zero: a transaction the pipeline began is still open.
    pub unsent: usize,
}

/// Runs `steps` sent back to back; their outputs in order, or the first
/// error in order. Every step that was sent runs to its answer, so the
/// session is left with nothing unread.
pub async fn in_order<T, E>(mut steps: Vec<Step<'_, T, E>>) -> Result<Vec<T>, Failed<E>> {
    let mut answers: Vec<Option<Result<T, E>>> = steps.iter().map(|_| None).collect();
    // Steps past this one are not sent: the one before it failed on its
    // first poll.
    let mut send_until = steps.len();
    let mut first_pass = true;
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (i, (step, answer)) in steps.iter_mut().zip(answers.iter_mut()).enumerate() {
            if i >= send_until {
                break;
            }
            if answer.is_some() {
                continue;
            }
            match step.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    send_until = if first_pass && r.is_err() {
                        i + 1
                    } else {
                        send_until
                    };
                    *answer = Some(r);
                }
                Poll::Pending => waiting = true,
            }
        }
        first_pass = false;
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    let unsent = steps.len() - send_until;
    answers
        .into_iter()
        .flatten()
        .collect::<Result<Vec<T>, E>>()
        .map_err(|error| Failed { error, unsent })
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
            step(log.clone(), "c", 1, Err("c failed")),
            step(log.clone(), "d", 1, Ok(4)),
        ])
        .await;
        assert_eq!(
            out,
            Err(Failed {
                error: "b failed",
                unsent: 0
            })
        );
        let log = log.lock().unwrap();
        for name in ["a", "b", "c", "d"] {
            assert!(log.contains(&format!("answer {name}")), "{log:?}");
        }
    }

    /// Guards against a partial commit: a step that fails before it is sent
    /// (an encoding error) is an error the server never sees, so a COMMIT
    /// sent after it would commit the steps before it.
    #[tokio::test]
    async fn a_step_failing_at_its_first_poll_keeps_the_rest_unsent() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = in_order(vec![
            step(log.clone(), "begin", 1, Ok(0)),
            step(log.clone(), "a", 2, Ok(1)),
            step(log.clone(), "b", 0, Err("b cannot be encoded")),
            step(log.clone(), "commit", 0, Ok(3)),
        ])
        .await;
        assert_eq!(
            out,
            Err(Failed {
                error: "b cannot be encoded",
                unsent: 1
            })
        );
        let log = log.lock().unwrap();
        assert!(!log.contains(&"send commit".to_string()), "{log:?}");
        // What was sent before it still gets its answer read.
        assert!(log.contains(&"answer a".to_string()), "{log:?}");
    }

    #[tokio::test]
    async fn no_steps_is_nothing_to_do() {
        assert_eq!(in_order::<u32, ()>(Vec::new()).await, Ok(vec![]));
    }
}

//! The application of a rolling deploy, for the two-way tests: writers of the
//! old version and of the new one at once, on a few hundred hot keys, each
//! recording what it wrote in an acknowledgement table in the same
//! transaction. The oracle is that table, read with plain SQL: the last
//! acknowledged write of every key must hold in both shapes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// A small deterministic generator (xorshift64*), one per writer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One application transaction: `(client, rng, writer number, iteration)`.
pub type Step =
    for<'a> fn(
        &'a tokio_postgres::Client,
        &'a mut Rng,
        u64,
        u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// Writers running until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    pub committed: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Load {
    /// Starts one task per `(step, count)`, each on its own connection,
    /// looping with `pause` between transactions.
    pub async fn start(conninfo: &str, writers: &[(Step, u64)], pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let mut number = 0u64;
        for (step, count) in writers {
            for _ in 0..*count {
                number += 1;
                let client = crate::support::connect(conninfo).await;
                let (stop, committed, failed) = (stop.clone(), committed.clone(), failed.clone());
                let step = *step;
                let writer = number;
                tasks.push(tokio::spawn(async move {
                    let mut rng = Rng::new(writer);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match step(&client, &mut rng, writer, i).await {
                            Ok(()) => {
                                committed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // Deadlocks and lock timeouts between the
                                // application's own writers are theirs to
                                // retry; nothing was acknowledged.
                                let _ = client.batch_execute("ROLLBACK").await;
                                failed.fetch_add(1, Ordering::Relaxed);
                                if e.code().is_none() {
                                    panic!("writer {writer}: {e}");
                                }
                            }
                        }
                        i += 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }));
            }
        }
        Load {
            stop,
            tasks,
            committed,
            failed,
        }
    }

    /// Stops every writer after its transaction in flight; the number of
    /// transactions committed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer task");
        }
        self.committed.load(Ordering::Relaxed)
    }
}

/// The conflicts a run reported in its log (lines of the applier that name
/// the keys both versions wrote before walshift reconciled the first).
pub fn conflicts_logged(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("the later commit won in both shapes"))
        .filter_map(|l| {
            let at = l.find("conflicts=")? + "conflicts=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

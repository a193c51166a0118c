//! A concurrent write load: several client tasks, each with its own connection, each running
//! random transactions produced by a scenario's step function.
//!
//! A step returns SQL text; several statements in it run as one transaction (one simple Query
//! message is one implicit transaction, rolled back whole on an error). Outcomes are counted:
//! acknowledged (commit returned), rejected (an error the scenario provokes on purpose, e.g. a
//! unique violation from racing key updates), lost (the connection broke, so the outcome is
//! unknown; only with `reconnect`). Any other error fails the test with the statement.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::support::process::Run;

/// SplitMix64: small, fast, and good enough to shuffle a workload. Seeded per task from the
/// load's seed, which is printed (set `WALSHIFT_TEST_SEED` to repeat a run's choices).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Produces the SQL of one transaction.
pub type Step = Arc<dyn Fn(&mut Rng) -> String + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Client tasks, each with its own connection.
    pub tasks: usize,
    /// Transactions each task runs unless the load is stopped first.
    pub txns_per_task: u64,
    /// Survive lost connections (server restart): count the transaction as lost, reconnect.
    pub reconnect: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            tasks: 4,
            txns_per_task: 250,
            reconnect: false,
        }
    }
}

/// What a finished load did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadStats {
    pub acked: u64,
    pub rejected: u64,
    pub lost: u64,
}

#[derive(Default)]
struct Shared {
    acked: AtomicU64,
    rejected: AtomicU64,
    lost: AtomicU64,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// A running load.
pub struct Load {
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    seed: u64,
}

impl Load {
    pub fn start(conninfo: &str, opts: LoadOptions, step: Step) -> Load {
        let seed = std::env::var("WALSHIFT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("load: {opts:?}, seed {seed} (WALSHIFT_TEST_SEED={seed} repeats the choices)");
        let shared = Arc::new(Shared::default());
        let tasks = (0..opts.tasks)
            .map(|i| {
                let rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
                tokio::spawn(run_task(
                    i,
                    conninfo.to_owned(),
                    opts,
                    step.clone(),
                    rng,
                    shared.clone(),
                ))
            })
            .collect();
        Load {
            tasks,
            shared,
            seed,
        }
    }

    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// Until at least `n` transactions were acknowledged (a mid-load action happens "under
    /// load" only if the load has really started and keeps going afterwards).
    pub async fn wait_acked(&self, n: u64, ws: Option<&Run>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_failure();
            if let Some(ws) = ws {
                ws.ensure_running();
            }
            if self.acked() >= n {
                return;
            }
            if self.tasks.iter().all(|t| t.is_finished()) {
                panic!(
                    "the load ended after {} acknowledged transactions, before {n} (seed {})",
                    self.acked(),
                    self.seed
                );
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} transactions acknowledged after 30s (seed {})",
                self.acked(),
                self.seed
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets every task finish its transactions.
    pub async fn finish(self) -> LoadStats {
        self.join().await
    }

    /// Tells the tasks to stop after their current transaction.
    pub async fn stop(self) -> LoadStats {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    async fn join(mut self) -> LoadStats {
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                panic!("a load task panicked: {e}");
            }
        }
        self.shared.check_failure(self.seed);
        let stats = LoadStats {
            acked: self.shared.acked.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            lost: self.shared.lost.load(Ordering::Relaxed),
        };
        eprintln!("load done: {stats:?}");
        stats
    }

    fn check_failure(&self) {
        self.shared.check_failure(self.seed);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Shared {
    fn check_failure(&self, seed: u64) {
        if let Some(failure) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            panic!("the load failed (seed {seed}): {failure}");
        }
    }

    fn fail(&self, message: String) {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(message);
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn run_task(
    task: usize,
    conninfo: String,
    opts: LoadOptions,
    step: Step,
    mut rng: Rng,
    shared: Arc<Shared>,
) {
    let mut client: Option<Client> = None;
    for _ in 0..opts.txns_per_task {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let sql = step(&mut rng);
        if client.is_none() {
            match connect(&conninfo, opts.reconnect, &shared).await {
                Ok(Some(c)) => client = Some(c),
                Ok(None) => return,
                Err(e) => return shared.fail(format!("task {task}: connect: {e}")),
            }
        }
        let c = client.as_ref().expect("connected above");
        match c.batch_execute(&sql).await {
            Ok(()) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if is_provoked(&e) => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if opts.reconnect && is_connection_loss(&e) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
            Err(e) => {
                return shared.fail(format!("task {task}: {}\n  in: {sql}", describe(&e)));
            }
        }
    }
}

/// A connection; with `reconnect`, retries (the server may be restarting) until stopped.
async fn connect(
    conninfo: &str,
    reconnect: bool,
    shared: &Shared,
) -> Result<Option<Client>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(conninfo, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(Some(client));
            }
            Err(e) if reconnect && Instant::now() < deadline => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(describe(&e)),
        }
    }
}

/// Errors the workloads provoke on purpose: racing key updates collide (unique violation),
/// and concurrent multi-row transactions may deadlock or fail to serialize.
fn is_provoked(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code().map(|c| c.code()),
        Some("23505" | "40P01" | "40001")
    )
}

fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code().map(|c| c.code()) {
        None => true,
        Some(code) => code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"),
    }
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

//! What to run, from the environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `E2E_REPS` | 3 | repetitions of every contender; the report shows medians |
//! | `E2E_SCALE` | 1 | multiplies every size and the live duration (0.1 for a quick run) |
//! | `E2E_ONLY` | all | `set,rows,live,catchup,memory,decoder,identity,cost,capacity`: the scenarios to run |
//! | `E2E_CLIENTS` | 4 | pgbench clients of the live scenario |
//! | `E2E_LIVE_SECONDS` | 20 × scale, at least 5 | length of one pgbench run |
//! | `E2E_CHUNK` | 10000 | backfill chunk rows of walshift and the in-server loop |
//! | `E2E_CLIENT_BIN` | the server's directory | where pgbench and pg_recvlogical are (e.g. Debian's 15 against a PG_BIN 16 server) |

/// The scenarios, in the order they run and are reported.
pub const SCENARIOS: [&str; 10] = [
    "set",
    "rows",
    "live",
    "catchup",
    "memory",
    "decoder",
    "identity",
    "cost",
    "capacity",
    "publication",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub reps: usize,
    pub scale: f64,
    pub only: Vec<String>,
    /// Rows of `users` (set mode, live load, catch-up).
    pub users: u64,
    /// Rows of `orders` (rows mode).
    pub orders: u64,
    pub chunk: u64,
    pub clients: u32,
    pub live_seconds: u64,
    /// Changes that pile up in the slot for the catch-up scenario.
    pub catchup_changes: u64,
    /// Rows of the single huge transaction of the memory scenario.
    pub big_txn_rows: u64,
}

impl Config {
    pub fn from_env() -> Self {
        let reps = whole("E2E_REPS").unwrap_or(3).max(1) as usize;
        let scale = match std::env::var("E2E_SCALE") {
            Ok(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite())
                .unwrap_or_else(|| panic!("E2E_SCALE={v:?} is not a positive number")),
            Err(_) => 1.0,
        };
        let only = match std::env::var("E2E_ONLY") {
            Ok(v) if !v.trim().is_empty() => {
                let names: Vec<String> = v
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect();
                for n in &names {
                    assert!(
                        SCENARIOS.contains(&n.as_str()),
                        "E2E_ONLY: {n:?} is not one of {}",
                        SCENARIOS.join(",")
                    );
                }
                names
            }
            _ => SCENARIOS.iter().map(|s| s.to_string()).collect(),
        };
        let scaled = |n: f64, at_least: u64| ((n * scale).round() as u64).max(at_least);
        Config {
            reps,
            scale,
            only,
            users: scaled(1_000_000.0, 1_000),
            orders: scaled(200_000.0, 200),
            chunk: whole("E2E_CHUNK").unwrap_or(10_000).max(1),
            clients: whole("E2E_CLIENTS").unwrap_or(4).max(1) as u32,
            live_seconds: whole("E2E_LIVE_SECONDS").unwrap_or_else(|| scaled(20.0, 5)),
            // Whole transactions of 100 changes.
            catchup_changes: scaled(1_000_000.0, 1_000) / 100 * 100,
            big_txn_rows: scaled(5_000_000.0, 1_000),
        }
    }

    pub fn runs(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }
}

fn whole(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
    )
}

//! Values for the parameters of a generated [`Statement`](super::sql::Statement),
//! in the order its [`Param`] list says. One binder for every caller (the
//! applier, verify, the ETA sample), so a statement is bound the same way
//! wherever it runs.

use tokio_postgres::types::{ToSql, Type};

use super::sql::Param;
use super::txn::Key;

/// What a statement may need bound.
#[derive(Default)]
pub struct Args<'a> {
    /// One `text[]` per key column ([`Param::KeyArray`]).
    pub key_arrays: Vec<Vec<&'a str>>,
    /// Key columns of the exclusive lower bound ([`Param::Lower`]).
    pub lower: Option<&'a [String]>,
    /// Key columns of the inclusive upper bound ([`Param::Upper`]).
    pub upper: Option<&'a [String]>,
    /// [`Param::ChunkRows`] and [`Param::Limit`].
    pub count: i64,
}

impl<'a> Args<'a> {
    /// Key arrays from keys (each its columns as text).
    pub fn keys<K: AsRef<[S]>, S: AsRef<str> + 'a>(keys: &'a [K], columns: usize) -> Self {
        let key_arrays = (0..columns)
            .map(|c| keys.iter().map(|k| k.as_ref()[c].as_ref()).collect())
            .collect();
        Args {
            key_arrays,
            ..Default::default()
        }
    }

    /// Key arrays from the engine's keys.
    pub fn engine_keys(keys: &[&'a Key], columns: usize) -> Self {
        let key_arrays = (0..columns)
            .map(|c| keys.iter().map(|k| &*k[c]).collect())
            .collect();
        Args {
            key_arrays,
            ..Default::default()
        }
    }

    /// The values for `params`, in order. Panics if a parameter has no value:
    /// that is a bug in the caller (a range statement bound without its
    /// bound), not a runtime condition.
    pub fn bind(&'a self, params: &[Param]) -> Vec<&'a (dyn ToSql + Sync)> {
        params
            .iter()
            .map(|p| -> &'a (dyn ToSql + Sync) {
                match *p {
                    Param::KeyArray(i) => &self.key_arrays[i],
                    Param::Lower(i) => {
                        &self.lower.expect("a lower bound for a lower-bounded range")[i]
                    }
                    Param::Upper(i) => &self
                        .upper
                        .expect("an upper bound for an upper-bounded range")[i],
                    Param::ChunkRows | Param::Limit => &self.count,
                }
            })
            .collect()
    }

    /// [`Args::bind`] with each value's type, for `query_typed` and
    /// `execute_typed`: no prepare round trip, so the statement can travel
    /// in a [`pipeline`](super::pipeline) with others.
    pub fn bind_typed(&'a self, params: &[Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
        self.bind(params)
            .into_iter()
            .zip(params)
            .map(|(v, p)| (v, p.pg_type()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_arrays_are_columns_of_the_keys() {
        let keys = vec![
            vec!["1".to_string(), "x".into()],
            vec!["2".into(), "y".into()],
        ];
        let args = Args::keys(&keys, 2);
        assert_eq!(args.key_arrays, vec![vec!["1", "2"], vec!["x", "y"]]);
        assert_eq!(args.bind(&[Param::KeyArray(1), Param::Limit]).len(), 2);
        let k1: Key = vec!["1".into(), "x".into()].into_boxed_slice();
        let args = Args::engine_keys(&[&k1], 2);
        assert_eq!(args.key_arrays, vec![vec!["1"], vec!["x"]]);
    }

    #[test]
    #[should_panic(expected = "a lower bound")]
    fn a_range_without_its_bound_is_a_bug() {
        Args::default().bind(&[Param::Lower(0)]);
    }
}

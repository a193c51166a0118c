//! Changes to the tables a mapping depends on (`depends`), turned into the
//! source keys they make dirty.
//!
//! A changed dependency row makes dirty the source rows whose reference
//! columns hold its key at the moment of the lookup. That is enough: a
//! source row that referred to it earlier and no longer does was changed
//! itself, and that change is in the stream; one that refers to it from
//! later on, likewise. The lookup runs after the visibility barrier (I2), so
//! the dependency's change is visible to the recompute that follows.

use std::collections::HashSet;

use tokio_postgres::types::Type;

use super::{Applier, ApplyError, Batch};
use crate::mirror::bind::Args;
use crate::mirror::sql;
use crate::mirror::txn::Key;

impl Applier {
    /// Whether any mirror of `batch` has dependency keys to resolve.
    pub(super) fn has_depends(batch: &Batch) -> bool {
        batch.mirrors.iter().any(|m| !m.depends.is_empty())
    }

    /// `batch` with every dependency key replaced by the source keys that
    /// refer to it now; a mirror whose keys would pass
    /// `max_depends_keys` becomes a whole-mirror pass. The caller has
    /// waited for the batch's transactions to be visible.
    pub(super) async fn resolve_depends(&self, batch: &Batch) -> Result<Batch, ApplyError> {
        let mut out = batch.clone();
        let max = self.opts.max_depends_keys;
        for (i, work) in out.mirrors.iter_mut().enumerate() {
            if work.depends.is_empty() {
                continue;
            }
            let depends = std::mem::take(&mut work.depends);
            if work.overflowed {
                continue;
            }
            let plan = &self.mirrors[i].plan;
            for (d, dep) in plan.depends.iter().enumerate() {
                let keys: Vec<&Key> = depends
                    .iter()
                    .filter(|(n, _)| *n == d)
                    .map(|(_, k)| k)
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let statement = sql::depends_keys(&plan.source, &plan.key, &dep.refs);
                let mut args = Args::engine_keys(&keys, dep.refs.len());
                args.count = (max + 1) as i64;
                let types: Vec<Type> = statement.params.iter().map(|p| p.pg_type()).collect();
                let values = args.bind(&statement.params);
                let typed: Vec<_> = values.iter().copied().zip(types).collect();
                let rows = self
                    .client
                    .query_typed(&statement.sql, &typed)
                    .await
                    .map_err(|e| super::mirror_err(&self.mirrors[i].label, e))?;
                let found: HashSet<Key> = rows
                    .iter()
                    .map(|r| {
                        (0..plan.key.len())
                            .map(|c| r.get::<_, String>(c).into_boxed_str())
                            .collect()
                    })
                    .collect();
                if found.len() > max || work.keys.len() + found.len() > max {
                    work.overflowed = true;
                    work.keys.clear();
                    break;
                }
                work.keys.extend(found);
            }
        }
        Ok(out)
    }
}

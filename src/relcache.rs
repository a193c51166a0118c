//! The shapes of the published tables, as the stream has announced them.
//!
//! pgoutput sends a Relation message before the first change to a table in a
//! session, and again whenever the server's cache entry for it is invalidated:
//! after DDL such as `ALTER TABLE ... ADD COLUMN`, but also after e.g.
//! `TRUNCATE ... RESTART IDENTITY`. Tuples in Insert/Update/Delete are
//! positional, so they can only be read against the latest announced shape;
//! this cache keeps it, keyed by relation OID, and replaces it on every
//! Relation message.
//!
//! "Key" here means the replica identity as the Relation message flags it
//! (bit 1 of the column flags). With REPLICA IDENTITY FULL every column is
//! flagged, and with NOTHING none is, so a caller that needs the primary key
//! under those settings looks its columns up by name instead.

use std::collections::HashMap;

use crate::pgoutput::{Relation, RelationColumn, TupleColumn};

/// A tuple could not be read against the cached shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelcacheError {
    /// A change named a relation no Relation message announced. pgoutput
    /// always announces first, so this means messages were lost or skipped.
    #[error("no Relation message seen for relation OID {relid}")]
    UnknownRelation { relid: u32 },

    /// The tuple does not have one value per announced column: the cached
    /// shape is stale.
    #[error("relation {relid} ({name}) has {expected} columns, the tuple has {found}")]
    ShapeMismatch {
        relid: u32,
        name: String,
        expected: usize,
        found: usize,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    relation: Relation,
    /// Positions of the flagged key columns, computed once per shape because
    /// every change needs them.
    key_indexes: Vec<usize>,
}

/// Latest announced shape of each relation, by OID.
#[derive(Clone, Debug, Default)]
pub struct RelationCache {
    entries: HashMap<u32, Entry>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a Relation message, replacing any earlier shape of the same
    /// OID. Returns the shape it replaced.
    pub fn apply(&mut self, relation: Relation) -> Option<Relation> {
        let key_indexes = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key())
            .map(|(i, _)| i)
            .collect();
        let entry = Entry {
            relation,
            key_indexes,
        };
        self.entries
            .insert(entry.relation.oid, entry)
            .map(|old| old.relation)
    }

    pub fn get(&self, relid: u32) -> Option<&Relation> {
        self.entries.get(&relid).map(|e| &e.relation)
    }

    /// Forget a relation (e.g. once it is no longer published).
    pub fn remove(&mut self, relid: u32) -> Option<Relation> {
        self.entries.remove(&relid).map(|e| e.relation)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Positions, in tuple order, of the columns flagged as replica identity.
    pub fn key_indexes(&self, relid: u32) -> Option<&[usize]> {
        self.entries.get(&relid).map(|e| e.key_indexes.as_slice())
    }

    /// Position of the column called `name` (exact, case-sensitive, as
    /// Postgres stores identifiers).
    pub fn column_index(&self, relid: u32, name: &str) -> Option<usize> {
        self.get(relid)?.columns.iter().position(|c| c.name == name)
    }

    pub fn column(&self, relid: u32, name: &str) -> Option<&RelationColumn> {
        self.get(relid)?.columns.iter().find(|c| c.name == name)
    }

    /// The values at the key positions of `tuple`, after checking that the
    /// tuple has the cached shape. For an old key ('K') tuple the non-key
    /// positions are nulls, so this is how to read it.
    pub fn key_values<'t>(
        &self,
        relid: u32,
        tuple: &'t [TupleColumn],
    ) -> Result<Vec<&'t TupleColumn>, RelcacheError> {
        let entry = self
            .entries
            .get(&relid)
            .ok_or(RelcacheError::UnknownRelation { relid })?;
        let expected = entry.relation.columns.len();
        if tuple.len() != expected {
            return Err(RelcacheError::ShapeMismatch {
                relid,
                name: format!("{}.{}", entry.relation.namespace, entry.relation.name),
                expected,
                found: tuple.len(),
            });
        }
        Ok(entry.key_indexes.iter().map(|&i| &tuple[i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pgoutput::ReplicaIdentity;

    fn column(name: &str, key: bool) -> RelationColumn {
        RelationColumn {
            flags: if key { RelationColumn::KEY } else { 0 },
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        }
    }

    fn relation(oid: u32, columns: Vec<RelationColumn>) -> Relation {
        Relation {
            xid: None,
            oid,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns,
        }
    }

    fn text(s: &'static str) -> TupleColumn {
        TupleColumn::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn lookup_by_oid_and_by_column_name() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        assert_eq!(
            cache.apply(relation(
                16391,
                vec![column("id", true), column("status", false)]
            )),
            None
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(16391).unwrap().name, "orders");
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.column_index(16391, "status"), Some(1));
        assert_eq!(cache.column_index(16391, "Status"), None);
        assert_eq!(cache.column(16391, "id").unwrap().type_oid, 25);
        assert_eq!(cache.column_index(1, "id"), None);
    }

    #[test]
    fn key_indexes_follow_flag_bit_one() {
        let mut cache = RelationCache::new();
        // A composite key whose parts are not the leading columns.
        cache.apply(relation(
            7,
            vec![
                column("note", false),
                column("tenant", true),
                column("created", false),
                column("id", true),
            ],
        ));
        assert_eq!(cache.key_indexes(7), Some(&[1usize, 3][..]));
        assert_eq!(cache.key_indexes(8), None);
    }

    #[test]
    fn relation_resent_after_ddl_replaces_the_old_shape() {
        let mut cache = RelationCache::new();
        let before = relation(16399, vec![column("id", true), column("note", false)]);
        cache.apply(before.clone());
        // ALTER TABLE ... ADD COLUMN extra; then a new key column order too.
        let after = relation(
            16399,
            vec![
                column("id", false),
                column("note", true),
                column("extra", false),
            ],
        );
        assert_eq!(cache.apply(after.clone()), Some(before));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(16399), Some(&after));
        assert_eq!(cache.key_indexes(16399), Some(&[1usize][..]));
        assert_eq!(cache.column_index(16399, "extra"), Some(2));
        // Tuples are now read against three columns, and two are refused.
        let old_shape = [text("1"), text("x")];
        assert_eq!(
            cache.key_values(16399, &old_shape),
            Err(RelcacheError::ShapeMismatch {
                relid: 16399,
                name: "public.orders".into(),
                expected: 3,
                found: 2
            })
        );
    }

    #[test]
    fn key_values_pick_the_key_from_an_old_key_tuple() {
        let mut cache = RelationCache::new();
        cache.apply(relation(
            5,
            vec![column("id", true), column("a", false), column("b", false)],
        ));
        // What pgoutput sends as 'K' for a primary-key update: nulls elsewhere.
        let old_key = [text("42"), TupleColumn::Null, TupleColumn::Null];
        assert_eq!(cache.key_values(5, &old_key), Ok(vec![&text("42")]));
        assert_eq!(
            cache.key_values(6, &old_key),
            Err(RelcacheError::UnknownRelation { relid: 6 })
        );
    }

    #[test]
    fn remove_forgets_a_relation() {
        let mut cache = RelationCache::new();
        cache.apply(relation(5, vec![column("id", true)]));
        assert!(cache.remove(5).is_some());
        assert!(cache.get(5).is_none());
        assert!(cache.key_indexes(5).is_none());
        assert!(cache.remove(5).is_none());
    }
}

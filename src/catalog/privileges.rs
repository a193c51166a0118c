//! What the current role lacks, gathered from every check into one line that
//! ends in the statements a superuser runs to fix it all at once: an
//! operator granting privileges wants one script, not a dozen partial ones.

use std::collections::BTreeMap;

use super::Problem;

#[derive(Debug)]
struct Need {
    what: String,
    /// Why walshift needs it; several checks may need the same thing.
    why: Vec<String>,
    fix: String,
}

#[derive(Debug, Default)]
pub(super) struct Grants {
    /// The role, quoted.
    role: String,
    /// What is missing apart from table privileges: what, why, and the fix;
    /// in the order found.
    other: Vec<Need>,
    /// Table (quoted) -> privileges to grant on it, e.g. `SELECT`, `UPDATE (status)`.
    tables: BTreeMap<String, Vec<String>>,
}

impl Grants {
    pub(super) fn set_role(&mut self, role: &str) {
        self.role = role.to_string();
    }

    pub(super) fn role(&self) -> &str {
        &self.role
    }

    /// Something the role lacks, why walshift needs it, and the statement
    /// that grants it. The same thing needed for two reasons (CREATE on the
    /// database, for the publication and for the state schema) is listed
    /// once with both.
    pub(super) fn need(
        &mut self,
        what: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let (what, why, fix) = (what.into(), why.into(), fix.into());
        match self.other.iter_mut().find(|n| n.what == what) {
            Some(need) if !need.why.contains(&why) => need.why.push(why),
            Some(_) => {}
            None => self.other.push(Need {
                what,
                why: vec![why],
                fix,
            }),
        }
    }

    /// A privilege on a table: `SELECT`, `INSERT`, or `UPDATE (a, b)`.
    pub(super) fn table(&mut self, table: &str, privilege: impl Into<String>) {
        let privilege = privilege.into();
        let privileges = self.tables.entry(table.to_string()).or_default();
        if !privileges.contains(&privilege) {
            privileges.push(privilege);
        }
    }

    pub(super) fn problem(&self) -> Option<Problem> {
        if self.other.is_empty() && self.tables.is_empty() {
            return None;
        }
        let mut lacks: Vec<String> = self
            .other
            .iter()
            .map(|n| format!("{} ({})", n.what, n.why.join(" and ")))
            .collect();
        let mut fixes: Vec<String> = self.other.iter().map(|n| n.fix.clone()).collect();
        for (table, privileges) in &self.tables {
            let list = privileges.join(", ");
            lacks.push(format!("{list} on {table}"));
            fixes.push(format!("GRANT {list} ON {table} TO {}", self.role));
        }
        Some(Problem {
            object: format!("role {}", self.role),
            message: format!(
                "lacks {}; as a superuser run: {}",
                lacks.join(", "),
                fixes.join("; ")
            ),
        })
    }
}

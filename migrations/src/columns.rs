//! The columns every tenant-owned table repeats — the ids of its rows' place in the tenant tree,
//! their indexes, and the creation and update instants — declared once, the same way on SQLite
//! and PostgreSQL.
//!
//! Instants are Unix milliseconds in `BIGINT` columns: integers compare the same way in SQL on
//! both engines, and the engine reads them as `db::sql::Millis`. Migrations released before this
//! helper declare the same columns by hand and stay as they are.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, string_len, string_len_null};

/// Length of a node id column: a UUID in its 36-character text form.
const ID_LEN: u32 = 36;

/// A tier of the tenant tree below the platform, in order from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Partner,
    Agent,
    Merchant,
    Store,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Partner, Tier::Agent, Tier::Merchant, Tier::Store];

    /// The column holding the id of a row's node of this tier.
    pub fn column(self) -> &'static str {
        match self {
            Tier::Partner => "partner_id",
            Tier::Agent => "agent_id",
            Tier::Merchant => "merchant_id",
            Tier::Store => "store_id",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tier::Partner => "partner",
            Tier::Agent => "agent",
            Tier::Merchant => "merchant",
            Tier::Store => "store",
        }
    }
}

/// Where in the tenant tree a table's rows sit, which says which id columns it has and which of
/// them may be NULL. Every row carries the id of each of its ancestors (itself included), so
/// "everything below node N" is one indexed equality on the column of N's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenancy {
    /// Every row has an id down to this tier (`None`: some rows are the platform's own).
    required: Option<Tier>,
    /// The deepest tier a row may sit at.
    deepest: Tier,
}

impl Tenancy {
    /// Every row belongs to a node of `tier`: its id and its ancestors' are `NOT NULL`.
    pub fn at(tier: Tier) -> Self {
        Self {
            required: Some(tier),
            deepest: tier,
        }
    }

    /// Rows may sit at any tier from the platform down to `tier`: every id may be `NULL`.
    pub fn anywhere_down_to(tier: Tier) -> Self {
        Self {
            required: None,
            deepest: tier,
        }
    }

    /// Rows may also sit lower, down to `tier`: the ids below the required tier may be `NULL`.
    pub fn or_below(self, tier: Tier) -> Self {
        Self {
            deepest: self.deepest.max(tier),
            ..self
        }
    }

    /// The id columns, from the partner down: `VARCHAR(36)`, `NOT NULL` down to the required
    /// tier.
    pub fn columns(&self) -> Vec<ColumnDef> {
        self.tiers()
            .map(|tier| {
                let name = Alias::new(tier.column());
                if self.required.is_some_and(|required| tier <= required) {
                    string_len(name, ID_LEN)
                } else {
                    string_len_null(name, ID_LEN)
                }
            })
            .collect()
    }

    /// One index per id column, named `idx_<table>_<tier>`, so a subtree's rows are one indexed
    /// equality away.
    pub fn indexes(&self, table: &str) -> Vec<IndexCreateStatement> {
        self.tiers()
            .map(|tier| {
                Index::create()
                    .if_not_exists()
                    .name(format!("idx_{table}_{}", tier.name()))
                    .table(Alias::new(table))
                    .col(Alias::new(tier.column()))
                    .to_owned()
            })
            .collect()
    }

    fn tiers(&self) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(|tier| *tier <= self.deepest)
    }
}

/// An instant column: Unix milliseconds, `BIGINT NOT NULL`.
pub fn instant<T: IntoIden>(name: T) -> ColumnDef {
    big_integer(name)
}

/// An instant column that may be `NULL` (not happened yet).
pub fn instant_null<T: IntoIden>(name: T) -> ColumnDef {
    big_integer_null(name)
}

/// The tenant columns on a table being created.
///
/// ```
/// use sea_orm_migration::prelude::*;
/// use sea_orm_migration::schema::{string_len, text};
/// use trellis_migrations::columns::{TenantColumns, Tenancy, Tier};
///
/// #[derive(DeriveIden)]
/// enum Coupons {
///     Table,
///     Id,
///     Code,
/// }
///
/// // Coupons belong to a merchant, some to one of its stores.
/// let tenancy = Tenancy::at(Tier::Merchant).or_below(Tier::Store);
/// let table = Table::create()
///     .table(Coupons::Table)
///     .if_not_exists()
///     .col(string_len(Coupons::Id, 36).primary_key())
///     .tenant(tenancy)
///     .col(text(Coupons::Code))
///     .timestamps()
///     .to_owned();
/// // In `up`: `manager.create_table(table)`, then each of `tenancy.indexes("coupons")`.
/// assert_eq!(tenancy.indexes("coupons").len(), 4);
/// # let _ = table;
/// ```
pub trait TenantColumns {
    /// Adds the id columns of `tenancy` (see [`Tenancy::columns`]).
    fn tenant(&mut self, tenancy: Tenancy) -> &mut Self;

    /// Adds `created_at` and `updated_at`, both [`instant`]s.
    fn timestamps(&mut self) -> &mut Self;
}

impl TenantColumns for TableCreateStatement {
    fn tenant(&mut self, tenancy: Tenancy) -> &mut Self {
        for column in tenancy.columns() {
            self.col(column);
        }
        self
    }

    fn timestamps(&mut self) -> &mut Self {
        self.col(instant(Alias::new("created_at")))
            .col(instant(Alias::new("updated_at")))
    }
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::schema::{string_len, text};

    use super::*;

    fn coupons() -> TableCreateStatement {
        Table::create()
            .table(Alias::new("coupons"))
            .if_not_exists()
            .col(string_len(Alias::new("id"), 36).primary_key())
            .tenant(Tenancy::at(Tier::Agent).or_below(Tier::Store))
            .col(text(Alias::new("code")))
            .timestamps()
            .to_owned()
    }

    #[test]
    fn a_table_with_tenant_columns_is_declared_for_sqlite_and_postgres() {
        // SQLite's INTEGER holds 64 bits: the same range as PostgreSQL's BIGINT.
        assert_eq!(
            coupons().to_string(SqliteQueryBuilder),
            r#"CREATE TABLE IF NOT EXISTS "coupons" ( "id" varchar(36) NOT NULL PRIMARY KEY, "partner_id" varchar(36) NOT NULL, "agent_id" varchar(36) NOT NULL, "merchant_id" varchar(36) NULL, "store_id" varchar(36) NULL, "code" text NOT NULL, "created_at" integer NOT NULL, "updated_at" integer NOT NULL )"#
        );
        assert_eq!(
            coupons().to_string(PostgresQueryBuilder),
            r#"CREATE TABLE IF NOT EXISTS "coupons" ( "id" varchar(36) NOT NULL PRIMARY KEY, "partner_id" varchar(36) NOT NULL, "agent_id" varchar(36) NOT NULL, "merchant_id" varchar(36) NULL, "store_id" varchar(36) NULL, "code" text NOT NULL, "created_at" bigint NOT NULL, "updated_at" bigint NOT NULL )"#
        );
    }

    #[test]
    fn ids_below_the_required_tier_may_be_null() {
        let nullable = |tenancy: Tenancy| -> Vec<bool> {
            let sql = Table::create()
                .table(Alias::new("t"))
                .tenant(tenancy)
                .to_string(PostgresQueryBuilder);
            Tier::ALL
                .iter()
                .filter(|tier| sql.contains(&format!("\"{}\"", tier.column())))
                .map(|tier| sql.contains(&format!("\"{}\" varchar(36) NULL", tier.column())))
                .collect()
        };
        assert_eq!(nullable(Tenancy::at(Tier::Partner)), [false]);
        assert_eq!(
            nullable(Tenancy::at(Tier::Partner).or_below(Tier::Merchant)),
            [false, true, true]
        );
        assert_eq!(nullable(Tenancy::at(Tier::Merchant)), [false; 3]);
        assert_eq!(nullable(Tenancy::anywhere_down_to(Tier::Store)), [true; 4]);
    }

    #[test]
    fn each_id_column_gets_an_index_named_after_its_table_and_tier() {
        let sql: Vec<String> = Tenancy::at(Tier::Partner)
            .or_below(Tier::Agent)
            .indexes("coupons")
            .iter()
            .map(|index| index.to_string(SqliteQueryBuilder))
            .collect();
        assert_eq!(
            sql,
            [
                r#"CREATE INDEX IF NOT EXISTS "idx_coupons_partner" ON "coupons" ("partner_id")"#,
                r#"CREATE INDEX IF NOT EXISTS "idx_coupons_agent" ON "coupons" ("agent_id")"#,
            ]
        );
    }
}

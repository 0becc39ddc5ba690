//! The sandbox's state: JSON documents by (namespace, key) in the engine database's
//! `sandbox_state` table — apps, cards, trades, notifications, its CA.

use chrono::Utc;
use sea_orm::sea_query::{Alias, Condition, Expr, ExprTrait, OnConflict, Order, Query as Sql};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::Value;

/// JSON documents by (namespace, key) in the `sandbox_state` table. Queries are built with
/// sea-query, so the one text serves SQLite and PostgreSQL.
pub(crate) struct Store<'a>(pub(crate) &'a DatabaseConnection);

fn state_table() -> Alias {
    Alias::new("sandbox_state")
}

fn by_key(namespace: &str, key: &str) -> Condition {
    Condition::all()
        .add(Expr::col(Alias::new("namespace")).eq(namespace))
        .add(Expr::col(Alias::new("key")).eq(key))
}

impl Store<'_> {
    pub(crate) async fn get(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<Value>, sea_orm::DbErr> {
        let query = Sql::select()
            .column(Alias::new("value"))
            .from(state_table())
            .cond_where(by_key(namespace, key))
            .to_owned();
        let backend = self.0.get_database_backend();
        let row = self.0.query_one_raw(backend.build(&query)).await?;
        Ok(row
            .and_then(|r| r.try_get::<String>("", "value").ok())
            .and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub(crate) async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: &Value,
    ) -> Result<(), sea_orm::DbErr> {
        let columns = ["namespace", "key", "value", "updated_at"].map(Alias::new);
        let insert = Sql::insert()
            .into_table(state_table())
            .columns(columns.clone())
            .values_panic([
                namespace.into(),
                key.into(),
                value.to_string().into(),
                Utc::now().into(),
            ])
            .on_conflict(
                OnConflict::columns([Alias::new("namespace"), Alias::new("key")])
                    .update_columns([Alias::new("value"), Alias::new("updated_at")])
                    .to_owned(),
            )
            .to_owned();
        let backend = self.0.get_database_backend();
        self.0.execute_raw(backend.build(&insert)).await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, namespace: &str, key: &str) -> Result<(), sea_orm::DbErr> {
        let delete = Sql::delete()
            .from_table(state_table())
            .cond_where(by_key(namespace, key))
            .to_owned();
        let backend = self.0.get_database_backend();
        self.0.execute_raw(backend.build(&delete)).await?;
        Ok(())
    }

    pub(crate) async fn all(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, Value)>, sea_orm::DbErr> {
        let query = Sql::select()
            .columns([Alias::new("key"), Alias::new("value")])
            .from(state_table())
            .and_where(Expr::col(Alias::new("namespace")).eq(namespace))
            .order_by(Alias::new("updated_at"), Order::Asc)
            .to_owned();
        let backend = self.0.get_database_backend();
        let rows = self.0.query_all_raw(backend.build(&query)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let key = r.try_get::<String>("", "key").ok()?;
                let value = serde_json::from_str(&r.try_get::<String>("", "value").ok()?).ok()?;
                Some((key, value))
            })
            .collect())
    }
}

//! Plugin key-value storage: one namespace per (installation, tenant scope), values versioned
//! for compare-and-swap, and a usage row per namespace that enforces the manifest's quota in
//! the same transaction as the write (and the namespace's last version, so versions never repeat).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PluginKv {
    Table,
    InstallationId,
    ScopeId,
    Key,
    Value,
    Version,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PluginKvUsage {
    Table,
    InstallationId,
    ScopeId,
    Keys,
    Bytes,
    LastVersion,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Prefix listing is a range scan on the key, so keys must sort bytewise; PostgreSQL's
        // default collation follows the locale, SQLite's BINARY already is bytewise.
        let mut key = string_len(PluginKv::Key, 256);
        if manager.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            key.extra("COLLATE \"C\"");
        }
        manager
            .create_table(
                Table::create()
                    .table(PluginKv::Table)
                    .if_not_exists()
                    .col(string_len(PluginKv::InstallationId, 64))
                    .col(string_len(PluginKv::ScopeId, 64))
                    .col(key)
                    .col(blob(PluginKv::Value))
                    .col(big_integer(PluginKv::Version))
                    .col(timestamp_with_time_zone(PluginKv::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(PluginKv::InstallationId)
                            .col(PluginKv::ScopeId)
                            .col(PluginKv::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PluginKvUsage::Table)
                    .if_not_exists()
                    .col(string_len(PluginKvUsage::InstallationId, 64))
                    .col(string_len(PluginKvUsage::ScopeId, 64))
                    .col(big_integer(PluginKvUsage::Keys))
                    .col(big_integer(PluginKvUsage::Bytes))
                    .col(big_integer(PluginKvUsage::LastVersion).default(0))
                    .primary_key(
                        Index::create()
                            .col(PluginKvUsage::InstallationId)
                            .col(PluginKvUsage::ScopeId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(PluginKvUsage::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(PluginKv::Table).if_exists().to_owned())
            .await
    }
}

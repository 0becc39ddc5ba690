//! State of the offline Alipay sandbox: registered apps, templates, cards, users, trades and
//! notification deliveries, as JSON documents by (namespace, key).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SandboxState {
    Table,
    Namespace,
    Key,
    Value,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SandboxState::Table)
                    .if_not_exists()
                    .col(string_len(SandboxState::Namespace, 32))
                    .col(string_len(SandboxState::Key, 200))
                    .col(text(SandboxState::Value))
                    .col(timestamp_with_time_zone(SandboxState::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(SandboxState::Namespace)
                            .col(SandboxState::Key),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(SandboxState::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

//! When an operator last reset an installation's circuit breaker: every engine process lifts
//! the suspensions it tripped before that instant on the installation's next call.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PluginInstallations {
    Table,
    BreakerResetAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PluginInstallations::Table)
                    .add_column(
                        ColumnDef::new(PluginInstallations::BreakerResetAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PluginInstallations::Table)
                    .drop_column(PluginInstallations::BreakerResetAt)
                    .to_owned(),
            )
            .await
    }
}

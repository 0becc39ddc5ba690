//! Bounds on what one tenant's plugins can put in the shared event outbox: every event records
//! the event its chain started from, a row per chain counts what descended from it (the fan-out
//! budget), a row per (installation, merchant) paces its emissions, and the indexes the
//! dispatcher's fair claim needs (per tenant, and skipping suspended nodes).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    RootId,
}

#[derive(DeriveIden)]
enum EventDeliveries {
    Table,
    Status,
    PartnerId,
    MerchantId,
    NextAttemptAt,
}

#[derive(DeriveIden)]
enum EventChains {
    Table,
    RootId,
    PartnerId,
    Events,
    Deliveries,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EventEmissionRates {
    Table,
    InstallationId,
    ScopeId,
    Tat,
}

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Status,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // NULL: the event started its chain (it came from outside the plugins, or from a
        // plugin's HTTP route); otherwise the first event of the chain that led to it.
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .add_column(string_len_null(Events::RootId, 36))
                    .to_owned(),
            )
            .await?;
        // What plugins emitted, directly or not, while handling one originating event: events
        // and their deliveries, each bounded by a setting. Charged by conditional updates, so
        // concurrent dispatchers in any number of processes cannot overshoot.
        manager
            .create_table(
                Table::create()
                    .table(EventChains::Table)
                    .if_not_exists()
                    .col(string_len(EventChains::RootId, 36).primary_key())
                    .col(string_len(EventChains::PartnerId, 36))
                    .col(big_integer(EventChains::Events).default(0))
                    .col(big_integer(EventChains::Deliveries).default(0))
                    .col(big_integer(EventChains::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // The pace of one installation's emissions for one merchant (or partner), as the
        // theoretical arrival time of the generic cell rate algorithm: a single integer that
        // one conditional update advances.
        manager
            .create_table(
                Table::create()
                    .table(EventEmissionRates::Table)
                    .if_not_exists()
                    .col(string_len(EventEmissionRates::InstallationId, 36))
                    .col(string_len(EventEmissionRates::ScopeId, 36))
                    .col(big_integer(EventEmissionRates::Tat))
                    .primary_key(
                        Index::create()
                            .col(EventEmissionRates::InstallationId)
                            .col(EventEmissionRates::ScopeId),
                    )
                    .to_owned(),
            )
            .await?;
        // The fair claim ranks due deliveries per partner and merchant in this order.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("event_deliveries_tenant_due")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::Status)
                    .col(EventDeliveries::PartnerId)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        // Every claim reads the suspended nodes (a handful among many active ones).
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_nodes_status")
                    .table(Nodes::Table)
                    .col(Nodes::Status)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("idx_nodes_status")
                    .table(Nodes::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("event_deliveries_tenant_due")
                    .table(EventDeliveries::Table)
                    .to_owned(),
            )
            .await?;
        for table in [
            EventEmissionRates::Table.into_iden(),
            EventChains::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .drop_column(Events::RootId)
                    .to_owned(),
            )
            .await
    }
}

//! Fewer, smaller indexes on deliveries, which every claim and every delivery rewrites:
//! - the turns index (partner, merchant, due instant, id) holds pending deliveries only, so
//!   claims walk and rank the backlog without stepping over every delivery ever delivered;
//! - the (status, due instant) index is dropped: with two indexes that begin with the status,
//!   PostgreSQL's planner, its statistics lagging behind a backlog that grew at once, would at
//!   times pick it and sort every pending delivery to find the first;
//! - the (merchant, installation, delivered at) index is dropped: nothing reads by it since
//!   the log pages by (merchant, created at, id).
//!
//! A delivery's row is written three times (queued, leased, delivered), and a change to an
//! indexed column writes an entry in every index of the table. On PostgreSQL pages are also
//! left a quarter free, so that a lease, which changes no indexed column, is rewritten in place.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventDeliveries {
    Table,
    Id,
    Status,
    PartnerId,
    MerchantId,
    InstallationId,
    NextAttemptAt,
    DeliveredAt,
}

fn drop(name: &str) -> IndexDropStatement {
    Index::drop()
        .if_exists()
        .name(name)
        .table(EventDeliveries::Table)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("event_deliveries_pending_turns")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::PartnerId)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::NextAttemptAt)
                    .col(EventDeliveries::Id)
                    .and_where(Expr::col(EventDeliveries::Status).eq("pending"))
                    .to_owned(),
            )
            .await?;
        for name in [
            "event_deliveries_turns",
            "event_deliveries_due",
            "event_deliveries_merchant",
        ] {
            manager.drop_index(drop(name)).await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE event_deliveries SET (fillfactor = 75)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE event_deliveries RESET (fillfactor)")
                .await?;
        }
        let indexes = [
            Index::create()
                .name("event_deliveries_turns")
                .col(EventDeliveries::Status)
                .col(EventDeliveries::PartnerId)
                .col(EventDeliveries::MerchantId)
                .col(EventDeliveries::NextAttemptAt)
                .col(EventDeliveries::Id)
                .to_owned(),
            Index::create()
                .name("event_deliveries_due")
                .col(EventDeliveries::Status)
                .col(EventDeliveries::NextAttemptAt)
                .to_owned(),
            Index::create()
                .name("event_deliveries_merchant")
                .col(EventDeliveries::MerchantId)
                .col(EventDeliveries::InstallationId)
                .col(EventDeliveries::DeliveredAt)
                .to_owned(),
        ];
        for mut index in indexes {
            manager
                .create_index(
                    index
                        .if_not_exists()
                        .table(EventDeliveries::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_index(drop("event_deliveries_pending_turns"))
            .await
    }
}

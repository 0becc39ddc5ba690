//! What the engine asked Alipay about each payment (`alipay.trade.query`, `close`, `cancel`, a
//! refund's query) and what Alipay answered, for the payment's detail: the other half of its
//! history beside Alipay's notifications. Instants are Unix milliseconds.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string_len, string_len_null};

use crate::columns::{Tenancy, TenantColumns, Tier};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PaymentChecks {
    Table,
    Id,
    PaymentId,
    Method,
    Outcome,
    TradeStatus,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tenancy = Tenancy::at(Tier::Merchant).or_below(Tier::Store);
        manager
            .create_table(
                Table::create()
                    .table(PaymentChecks::Table)
                    .if_not_exists()
                    .col(string_len(PaymentChecks::Id, 36).primary_key())
                    .col(string_len(PaymentChecks::PaymentId, 36))
                    .tenant(tenancy)
                    .col(string_len(PaymentChecks::Method, 64))
                    .col(string_len(PaymentChecks::Outcome, 64))
                    .col(string_len_null(PaymentChecks::TradeStatus, 32))
                    .timestamps()
                    .to_owned(),
            )
            .await?;
        for index in tenancy.indexes("payment_checks") {
            manager.create_index(index).await?;
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("payment_checks_payment")
                    .table(PaymentChecks::Table)
                    .col(PaymentChecks::PaymentId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(PaymentChecks::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

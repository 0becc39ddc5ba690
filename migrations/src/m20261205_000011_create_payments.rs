//! The payment ledger: one row per trade the engine creates at Alipay, one per refund of it, and
//! one per notification that could not be applied (an unknown trade, a foreign app, an amount
//! that does not agree with the ledger), for the merchant to see.
//!
//! Amounts are fen in `BIGINT` (never floating point); instants are Unix milliseconds. A trade is
//! unique per merchant app and `out_trade_no` (Alipay's own key for it), a refund per payment and
//! `out_request_no` (Alipay's idempotency key for it).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, string_len, string_len_null};

use crate::columns::{Tenancy, TenantColumns, Tier, instant_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    DeviceId,
    OperatorId,
    AppId,
    OutTradeNo,
    TradeNo,
    Scene,
    AmountFen,
    RefundedFen,
    Subject,
    Purpose,
    PluginId,
    QrCode,
    BuyerId,
    BuyerOpenId,
    BuyerLogonId,
    Status,
    ExpiresAt,
    WaitingAt,
    PaidAt,
    FinishedAt,
    ClosedAt,
    CheckedAt,
}

#[derive(DeriveIden)]
enum PaymentRefunds {
    Table,
    Id,
    PaymentId,
    OperatorId,
    OutRequestNo,
    AmountFen,
    Reason,
    Status,
    RefundedAt,
}

#[derive(DeriveIden)]
enum PaymentAnomalies {
    Table,
    Id,
    NotificationId,
    PaymentId,
    Kind,
    Detail,
}

fn payments() -> TableCreateStatement {
    Table::create()
        .table(Payments::Table)
        .if_not_exists()
        .col(string_len(Payments::Id, 36).primary_key())
        .tenant(Tenancy::at(Tier::Merchant).or_below(Tier::Store))
        .col(string_len_null(Payments::DeviceId, 64))
        .col(string_len_null(Payments::OperatorId, 36))
        .col(string_len(Payments::AppId, 32))
        .col(string_len(Payments::OutTradeNo, 64))
        .col(string_len_null(Payments::TradeNo, 64))
        .col(string_len(Payments::Scene, 16))
        .col(big_integer(Payments::AmountFen))
        .col(big_integer(Payments::RefundedFen).default(0))
        .col(string_len(Payments::Subject, 256))
        .col(string_len(Payments::Purpose, 64))
        .col(string_len_null(Payments::PluginId, 128))
        .col(string_len_null(Payments::QrCode, 1024))
        .col(string_len_null(Payments::BuyerId, 32))
        .col(string_len_null(Payments::BuyerOpenId, 128))
        .col(string_len_null(Payments::BuyerLogonId, 100))
        .col(string_len(Payments::Status, 16))
        .col(instant_null(Payments::ExpiresAt))
        .col(instant_null(Payments::WaitingAt))
        .col(instant_null(Payments::PaidAt))
        .col(instant_null(Payments::FinishedAt))
        .col(instant_null(Payments::ClosedAt))
        .col(instant_null(Payments::CheckedAt))
        .timestamps()
        .to_owned()
}

fn refunds() -> TableCreateStatement {
    Table::create()
        .table(PaymentRefunds::Table)
        .if_not_exists()
        .col(string_len(PaymentRefunds::Id, 36).primary_key())
        .col(string_len(PaymentRefunds::PaymentId, 36))
        .tenant(Tenancy::at(Tier::Merchant).or_below(Tier::Store))
        .col(string_len_null(PaymentRefunds::OperatorId, 36))
        .col(string_len(PaymentRefunds::OutRequestNo, 64))
        .col(big_integer(PaymentRefunds::AmountFen))
        .col(string_len_null(PaymentRefunds::Reason, 256))
        .col(string_len(PaymentRefunds::Status, 16))
        .col(instant_null(PaymentRefunds::RefundedAt))
        .timestamps()
        .to_owned()
}

fn anomalies() -> TableCreateStatement {
    Table::create()
        .table(PaymentAnomalies::Table)
        .if_not_exists()
        .col(string_len(PaymentAnomalies::Id, 36).primary_key())
        .tenant(Tenancy::at(Tier::Merchant).or_below(Tier::Store))
        .col(string_len(PaymentAnomalies::NotificationId, 36))
        .col(string_len_null(PaymentAnomalies::PaymentId, 36))
        .col(string_len(PaymentAnomalies::Kind, 32))
        .col(string_len(PaymentAnomalies::Detail, 512))
        .timestamps()
        .to_owned()
}

fn unique(name: &str, table: impl IntoIden, cols: [&str; 2]) -> IndexCreateStatement {
    Index::create()
        .if_not_exists()
        .name(name)
        .table(table)
        .col(Alias::new(cols[0]))
        .col(Alias::new(cols[1]))
        .unique()
        .to_owned()
}

fn index(name: &str, table: impl IntoIden, cols: &[&str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.if_not_exists().name(name).table(table);
    for col in cols {
        index.col(Alias::new(*col));
    }
    index.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tenancy = Tenancy::at(Tier::Merchant).or_below(Tier::Store);
        manager.create_table(payments()).await?;
        for index in tenancy.indexes("payments") {
            manager.create_index(index).await?;
        }
        for statement in [
            unique(
                "payments_app_out_trade_no",
                Payments::Table,
                ["app_id", "out_trade_no"],
            ),
            index(
                "payments_merchant_created",
                Payments::Table,
                &["merchant_id", "created_at"],
            ),
            index(
                "payments_store_created",
                Payments::Table,
                &["store_id", "created_at"],
            ),
            // What reconciliation looks for: trades not final, oldest check first.
            index("payments_open", Payments::Table, &["status", "checked_at"]),
        ] {
            manager.create_index(statement).await?;
        }
        manager.create_table(refunds()).await?;
        for index in tenancy.indexes("payment_refunds") {
            manager.create_index(index).await?;
        }
        manager
            .create_index(unique(
                "payment_refunds_request",
                PaymentRefunds::Table,
                ["payment_id", "out_request_no"],
            ))
            .await?;
        manager.create_table(anomalies()).await?;
        for index in tenancy.indexes("payment_anomalies") {
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["payment_anomalies", "payment_refunds", "payments"] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}

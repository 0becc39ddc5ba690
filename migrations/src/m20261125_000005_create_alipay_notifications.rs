//! Verified Alipay notifications, recorded before the engine answers `success`; unique per
//! (app id, notify id) so Alipay's retries and duplicates are absorbed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AlipayNotifications {
    Table,
    Id,
    MerchantId,
    PartnerId,
    AgentId,
    AppId,
    NotifyId,
    NotifyType,
    OutTradeNo,
    TradeNo,
    TradeStatus,
    Fields,
    ReceivedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AlipayNotifications::Table)
                    .if_not_exists()
                    .col(string_len(AlipayNotifications::Id, 36).primary_key())
                    .col(string_len(AlipayNotifications::MerchantId, 36))
                    .col(string_len_null(AlipayNotifications::PartnerId, 36))
                    .col(string_len_null(AlipayNotifications::AgentId, 36))
                    .col(string_len(AlipayNotifications::AppId, 32))
                    .col(string_len(AlipayNotifications::NotifyId, 128))
                    .col(string_len(AlipayNotifications::NotifyType, 64))
                    .col(string_len_null(AlipayNotifications::OutTradeNo, 64))
                    .col(string_len_null(AlipayNotifications::TradeNo, 64))
                    .col(string_len_null(AlipayNotifications::TradeStatus, 32))
                    .col(text(AlipayNotifications::Fields))
                    .col(timestamp_with_time_zone(AlipayNotifications::ReceivedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alipay_notifications_unique")
                    .table(AlipayNotifications::Table)
                    .col(AlipayNotifications::AppId)
                    .col(AlipayNotifications::NotifyId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alipay_notifications_merchant")
                    .table(AlipayNotifications::Table)
                    .col(AlipayNotifications::MerchantId)
                    .col(AlipayNotifications::ReceivedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(AlipayNotifications::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

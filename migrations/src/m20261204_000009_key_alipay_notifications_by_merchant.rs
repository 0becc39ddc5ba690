//! Verified Alipay notifications become unique per (merchant, app, notify id) instead of per
//! (app, notify id). Several merchants may have the same app id — one matched by `app_id`,
//! another by `auth_app_id` under a service provider's app — and a key without the merchant
//! let one merchant's record absorb another's notification, acknowledged and never recorded.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AlipayNotifications {
    Table,
    MerchantId,
    AppId,
    NotifyId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The new key is wider than the old one, so existing rows already satisfy it; creating
        // it before dropping the old one leaves no moment without a unique key.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_alipay_notifications_merchant_notify")
                    .table(AlipayNotifications::Table)
                    .col(AlipayNotifications::MerchantId)
                    .col(AlipayNotifications::AppId)
                    .col(AlipayNotifications::NotifyId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("idx_alipay_notifications_unique")
                    .table(AlipayNotifications::Table)
                    .to_owned(),
            )
            .await
    }

    /// Fails, leaving the new key in place, when two merchants hold the same (app id, notify
    /// id): the old key cannot describe those records.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("idx_alipay_notifications_merchant_notify")
                    .table(AlipayNotifications::Table)
                    .to_owned(),
            )
            .await
    }
}

//! A merchant's Alipay app: identity, key mode, gateway, and its secrets sealed by the vault.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AlipayCredentials {
    Table,
    MerchantId,
    PartnerId,
    AgentId,
    AppId,
    KeyMode,
    SignType,
    Gateway,
    GatewayUrl,
    AppPrivateKey,
    AppPrivateKeyKid,
    AppPublicKey,
    Fingerprint,
    AlipayPublicKey,
    AppCert,
    AlipayCert,
    AlipayRootCert,
    AppCertSn,
    AlipayCertSn,
    AlipayRootCertSn,
    AesKey,
    AesKeyKid,
    UpdatedBy,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AlipayCredentials::Table)
                    .if_not_exists()
                    .col(string_len(AlipayCredentials::MerchantId, 36).primary_key())
                    .col(string_len_null(AlipayCredentials::PartnerId, 36))
                    .col(string_len_null(AlipayCredentials::AgentId, 36))
                    .col(string_len_null(AlipayCredentials::AppId, 32))
                    .col(string_len(AlipayCredentials::KeyMode, 16))
                    .col(string_len(AlipayCredentials::SignType, 8))
                    .col(string_len(AlipayCredentials::Gateway, 16))
                    .col(string_len_null(AlipayCredentials::GatewayUrl, 512))
                    .col(text_null(AlipayCredentials::AppPrivateKey))
                    .col(string_len_null(AlipayCredentials::AppPrivateKeyKid, 32))
                    .col(text_null(AlipayCredentials::AppPublicKey))
                    .col(string_len_null(AlipayCredentials::Fingerprint, 80))
                    .col(text_null(AlipayCredentials::AlipayPublicKey))
                    .col(text_null(AlipayCredentials::AppCert))
                    .col(text_null(AlipayCredentials::AlipayCert))
                    .col(text_null(AlipayCredentials::AlipayRootCert))
                    .col(string_len_null(AlipayCredentials::AppCertSn, 64))
                    .col(string_len_null(AlipayCredentials::AlipayCertSn, 64))
                    .col(string_len_null(AlipayCredentials::AlipayRootCertSn, 200))
                    .col(text_null(AlipayCredentials::AesKey))
                    .col(string_len_null(AlipayCredentials::AesKeyKid, 32))
                    .col(string_len_null(AlipayCredentials::UpdatedBy, 36))
                    .col(timestamp_with_time_zone(AlipayCredentials::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_alipay_credentials_merchant")
                            .from(AlipayCredentials::Table, AlipayCredentials::MerchantId)
                            .to(Nodes::Table, Nodes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_alipay_credentials_app", AlipayCredentials::AppId),
            (
                "idx_alipay_credentials_partner",
                AlipayCredentials::PartnerId,
            ),
            ("idx_alipay_credentials_agent", AlipayCredentials::AgentId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(AlipayCredentials::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(AlipayCredentials::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

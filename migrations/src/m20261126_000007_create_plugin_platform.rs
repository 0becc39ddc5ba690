//! Plugins in the live platform: the partner's catalog (installations and their versions, the
//! archives themselves, the signature policy), agents' packages and their published versions,
//! assignments to merchants, per-merchant plugin configuration, and the event outbox with one
//! delivery row per (event, installation).
//!
//! Instants here are Unix milliseconds (`BIGINT`): the dispatcher compares them in SQL on every
//! claim, and integers compare the same way on SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PluginArchives {
    Table,
    Digest,
    PluginId,
    Version,
    Bytes,
    Size,
    UploadedAt,
}

#[derive(DeriveIden)]
enum PluginInstallations {
    Table,
    Id,
    PartnerId,
    PluginId,
    ActiveVersion,
    Offered,
    Status,
    InstalledAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PluginVersions {
    Table,
    InstallationId,
    Version,
    Digest,
    Manifest,
    InstalledAt,
    InstalledBy,
}

#[derive(DeriveIden)]
enum PluginPolicies {
    Table,
    PartnerId,
    RequireSignature,
    TrustedKeys,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Packages {
    Table,
    Id,
    PartnerId,
    AgentId,
    Draft,
    PublishedVersion,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PackageVersions {
    Table,
    PackageId,
    Version,
    Spec,
    PublishedAt,
}

#[derive(DeriveIden)]
enum Assignments {
    Table,
    Id,
    PackageId,
    PackageVersion,
    MerchantId,
    AgentId,
    PartnerId,
    StartsAt,
    EndsAt,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PluginConfigs {
    Table,
    InstallationId,
    MerchantId,
    Config,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    Kind,
    PartnerId,
    AgentId,
    MerchantId,
    Payload,
    Source,
    Depth,
    OccurredAt,
}

#[derive(DeriveIden)]
enum EventDeliveries {
    Table,
    Id,
    EventId,
    InstallationId,
    PartnerId,
    AgentId,
    MerchantId,
    Kind,
    Status,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    LeaseOwner,
    LastError,
    LatencyMs,
    CreatedAt,
    UpdatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum DeliveryQuota {
    Table,
    InstallationId,
    MerchantId,
    Day,
    Used,
    Held,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PluginArchives::Table)
                    .if_not_exists()
                    .col(string_len(PluginArchives::Digest, 64).primary_key())
                    .col(string_len(PluginArchives::PluginId, 100))
                    .col(string_len(PluginArchives::Version, 64))
                    .col(blob(PluginArchives::Bytes))
                    .col(big_integer(PluginArchives::Size))
                    .col(big_integer(PluginArchives::UploadedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PluginInstallations::Table)
                    .if_not_exists()
                    .col(string_len(PluginInstallations::Id, 36).primary_key())
                    .col(string_len(PluginInstallations::PartnerId, 36))
                    .col(string_len(PluginInstallations::PluginId, 100))
                    .col(string_len(PluginInstallations::ActiveVersion, 64))
                    .col(boolean(PluginInstallations::Offered).default(false))
                    .col(string_len(PluginInstallations::Status, 16))
                    .col(big_integer(PluginInstallations::InstalledAt))
                    .col(big_integer(PluginInstallations::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("plugin_installations_partner_plugin")
                    .table(PluginInstallations::Table)
                    .col(PluginInstallations::PartnerId)
                    .col(PluginInstallations::PluginId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PluginVersions::Table)
                    .if_not_exists()
                    .col(string_len(PluginVersions::InstallationId, 36))
                    .col(string_len(PluginVersions::Version, 64))
                    .col(string_len(PluginVersions::Digest, 64))
                    // The manifest as JSON, so the catalog and event fan-out never need to
                    // load (or compile) a component to know what it subscribes to.
                    .col(text(PluginVersions::Manifest))
                    .col(big_integer(PluginVersions::InstalledAt))
                    .col(text(PluginVersions::InstalledBy))
                    .primary_key(
                        Index::create()
                            .col(PluginVersions::InstallationId)
                            .col(PluginVersions::Version),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PluginPolicies::Table)
                    .if_not_exists()
                    .col(string_len(PluginPolicies::PartnerId, 36).primary_key())
                    .col(boolean(PluginPolicies::RequireSignature).default(false))
                    .col(text(PluginPolicies::TrustedKeys))
                    .col(big_integer(PluginPolicies::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Packages::Table)
                    .if_not_exists()
                    .col(string_len(Packages::Id, 36).primary_key())
                    .col(string_len(Packages::PartnerId, 36))
                    .col(string_len(Packages::AgentId, 36))
                    .col(text(Packages::Draft))
                    .col(integer(Packages::PublishedVersion).default(0))
                    .col(string_len(Packages::Status, 16))
                    .col(big_integer(Packages::CreatedAt))
                    .col(big_integer(Packages::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("packages_agent")
                    .table(Packages::Table)
                    .col(Packages::AgentId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PackageVersions::Table)
                    .if_not_exists()
                    .col(string_len(PackageVersions::PackageId, 36))
                    .col(integer(PackageVersions::Version))
                    .col(text(PackageVersions::Spec))
                    .col(big_integer(PackageVersions::PublishedAt))
                    .primary_key(
                        Index::create()
                            .col(PackageVersions::PackageId)
                            .col(PackageVersions::Version),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Assignments::Table)
                    .if_not_exists()
                    .col(string_len(Assignments::Id, 36).primary_key())
                    .col(string_len(Assignments::PackageId, 36))
                    .col(integer(Assignments::PackageVersion))
                    .col(string_len(Assignments::MerchantId, 36))
                    .col(string_len(Assignments::AgentId, 36))
                    .col(string_len(Assignments::PartnerId, 36))
                    .col(big_integer(Assignments::StartsAt))
                    .col(big_integer(Assignments::EndsAt))
                    .col(string_len(Assignments::Status, 16))
                    .col(big_integer(Assignments::CreatedAt))
                    .col(big_integer(Assignments::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("assignments_merchant")
                    .table(Assignments::Table)
                    .col(Assignments::MerchantId)
                    .col(Assignments::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PluginConfigs::Table)
                    .if_not_exists()
                    .col(string_len(PluginConfigs::InstallationId, 36))
                    .col(string_len(PluginConfigs::MerchantId, 36))
                    .col(text(PluginConfigs::Config))
                    .col(big_integer(PluginConfigs::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(PluginConfigs::InstallationId)
                            .col(PluginConfigs::MerchantId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .if_not_exists()
                    .col(string_len(Events::Id, 36).primary_key())
                    .col(string_len(Events::Kind, 64))
                    .col(string_len(Events::PartnerId, 36))
                    .col(string_len_null(Events::AgentId, 36))
                    .col(string_len_null(Events::MerchantId, 36))
                    .col(text(Events::Payload))
                    .col(string_len(Events::Source, 120))
                    // How many plugin hops led to this event (0: from outside the plugins);
                    // bounds chains of plugins emitting events to each other.
                    .col(integer(Events::Depth).default(0))
                    .col(big_integer(Events::OccurredAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventDeliveries::Table)
                    .if_not_exists()
                    .col(string_len(EventDeliveries::Id, 36).primary_key())
                    .col(string_len(EventDeliveries::EventId, 36))
                    .col(string_len(EventDeliveries::InstallationId, 36))
                    .col(string_len(EventDeliveries::PartnerId, 36))
                    .col(string_len_null(EventDeliveries::AgentId, 36))
                    .col(string_len_null(EventDeliveries::MerchantId, 36))
                    .col(string_len(EventDeliveries::Kind, 64))
                    .col(string_len(EventDeliveries::Status, 16))
                    .col(integer(EventDeliveries::Attempts).default(0))
                    .col(big_integer(EventDeliveries::NextAttemptAt))
                    .col(big_integer_null(EventDeliveries::LeaseUntil))
                    .col(string_len_null(EventDeliveries::LeaseOwner, 64))
                    .col(text_null(EventDeliveries::LastError))
                    .col(big_integer_null(EventDeliveries::LatencyMs))
                    .col(big_integer(EventDeliveries::CreatedAt))
                    .col(big_integer(EventDeliveries::UpdatedAt))
                    .col(big_integer_null(EventDeliveries::DeliveredAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("event_deliveries_once")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::EventId)
                    .col(EventDeliveries::InstallationId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("event_deliveries_due")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::Status)
                    .col(EventDeliveries::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        // Deliveries counted against a package's daily quota, reserved atomically before each
        // attempt so that concurrent dispatchers cannot overshoot it.
        manager
            .create_table(
                Table::create()
                    .table(DeliveryQuota::Table)
                    .if_not_exists()
                    .col(string_len(DeliveryQuota::InstallationId, 36))
                    .col(string_len(DeliveryQuota::MerchantId, 36))
                    .col(big_integer(DeliveryQuota::Day))
                    // Delivered today, and held by attempts in flight.
                    .col(big_integer(DeliveryQuota::Used).default(0))
                    .col(big_integer(DeliveryQuota::Held).default(0))
                    .primary_key(
                        Index::create()
                            .col(DeliveryQuota::InstallationId)
                            .col(DeliveryQuota::MerchantId)
                            .col(DeliveryQuota::Day),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("event_deliveries_merchant")
                    .table(EventDeliveries::Table)
                    .col(EventDeliveries::MerchantId)
                    .col(EventDeliveries::InstallationId)
                    .col(EventDeliveries::DeliveredAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DeliveryQuota::Table.into_iden(),
            EventDeliveries::Table.into_iden(),
            Events::Table.into_iden(),
            PluginConfigs::Table.into_iden(),
            Assignments::Table.into_iden(),
            PackageVersions::Table.into_iden(),
            Packages::Table.into_iden(),
            PluginPolicies::Table.into_iden(),
            PluginVersions::Table.into_iden(),
            PluginInstallations::Table.into_iden(),
            PluginArchives::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

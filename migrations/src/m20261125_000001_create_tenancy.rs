//! The tenant tree (platform → partner → agent → merchant → store) and the accounts on it.
//!
//! Every node carries the ids of its partner, agent and merchant ancestors (itself included), so
//! "everything below node N" is one indexed equality on the column of N's kind.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Id,
    Kind,
    ParentId,
    PartnerId,
    AgentId,
    MerchantId,
    StoreId,
    Name,
    Theme,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PartnerDomains {
    Table,
    Domain,
    PartnerId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    NodeId,
    PartnerId,
    AgentId,
    MerchantId,
    StoreId,
    Email,
    PasswordHash,
    Role,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Nodes::Table)
                    .if_not_exists()
                    .col(string_len(Nodes::Id, 36).primary_key())
                    .col(string_len(Nodes::Kind, 16))
                    .col(string_len_null(Nodes::ParentId, 36))
                    .col(string_len_null(Nodes::PartnerId, 36))
                    .col(string_len_null(Nodes::AgentId, 36))
                    .col(string_len_null(Nodes::MerchantId, 36))
                    .col(string_len_null(Nodes::StoreId, 36))
                    .col(string_len(Nodes::Name, 200))
                    .col(string_len_null(Nodes::Theme, 64))
                    .col(string_len(Nodes::Status, 16).default("active"))
                    .col(timestamp_with_time_zone(Nodes::CreatedAt))
                    .col(timestamp_with_time_zone(Nodes::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_nodes_parent")
                            .from(Nodes::Table, Nodes::ParentId)
                            .to(Nodes::Table, Nodes::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_nodes_parent", Nodes::ParentId),
            ("idx_nodes_partner", Nodes::PartnerId),
            ("idx_nodes_agent", Nodes::AgentId),
            ("idx_nodes_merchant", Nodes::MerchantId),
            ("idx_nodes_kind", Nodes::Kind),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Nodes::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }

        // White label: the Host header picks the partner. A domain belongs to one partner.
        manager
            .create_table(
                Table::create()
                    .table(PartnerDomains::Table)
                    .if_not_exists()
                    .col(string_len(PartnerDomains::Domain, 253).primary_key())
                    .col(string_len(PartnerDomains::PartnerId, 36))
                    .col(timestamp_with_time_zone(PartnerDomains::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_partner_domains_partner")
                            .from(PartnerDomains::Table, PartnerDomains::PartnerId)
                            .to(Nodes::Table, Nodes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_partner_domains_partner")
                    .table(PartnerDomains::Table)
                    .col(PartnerDomains::PartnerId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(string_len(Users::Id, 36).primary_key())
                    .col(string_len(Users::NodeId, 36))
                    .col(string_len_null(Users::PartnerId, 36))
                    .col(string_len_null(Users::AgentId, 36))
                    .col(string_len_null(Users::MerchantId, 36))
                    .col(string_len_null(Users::StoreId, 36))
                    .col(string_len(Users::Email, 254))
                    .col(string_len(Users::PasswordHash, 255))
                    .col(string_len(Users::Role, 32))
                    .col(string_len(Users::Status, 16).default("active"))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_users_node")
                            .from(Users::Table, Users::NodeId)
                            .to(Nodes::Table, Nodes::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Emails are stored lower-cased, so a plain unique index is case-insensitive in effect.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_users_email")
                    .table(Users::Table)
                    .col(Users::Email)
                    .unique()
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_users_node", Users::NodeId),
            ("idx_users_partner", Users::PartnerId),
            ("idx_users_agent", Users::AgentId),
            ("idx_users_merchant", Users::MerchantId),
            ("idx_users_store", Users::StoreId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Users::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).if_exists().to_owned())
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(PartnerDomains::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Nodes::Table).if_exists().to_owned())
            .await
    }
}

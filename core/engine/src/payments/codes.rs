//! Payments with the buyer's code (`scene = bar_code`, the code in their Alipay app) or face
//! (`scene = security_code`, a face-pay token), as Alipay's face-to-face flow has them:
//! `alipay.trade.pay`; `10003` or an unknown outcome means the buyer may still be confirming,
//! so the trade is polled with `alipay.trade.query`; a trade still unpaid at its deadline is
//! cancelled (`alipay.trade.cancel`), which also returns money Alipay took meanwhile.
//!
//! Invariant: a code payment is recorded before Alipay is asked and ends `succeeded` or
//! `closed` — never left open past its deadline plus one reconciliation round. Field sources:
//! alipay-sdk-java-all `AlipayTradePayModel` (scene, auth_code), `AlipayTradeCancelModel`.

use std::time::Duration;

use serde_json::json;

use super::ledger::Status;
use super::store::{Facts, Payment};
use super::trades::{Opened, facts_of_answer, text};
use super::{Error, NewTrade, Payments};
use crate::alipay::response::GatewayErrorKind;

/// How a buyer pays at the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// The payment code shown in the buyer's Alipay app.
    BarCode,
    /// A face-pay token from a face device.
    Face,
}

impl Scene {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "bar_code" => Some(Scene::BarCode),
            "security_code" => Some(Scene::Face),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scene::BarCode => "bar_code",
            Scene::Face => "security_code",
        }
    }

    /// Whether `code` has the shape Alipay documents for this scene.
    pub fn fits(self, code: &str) -> bool {
        crate::alipay::codes::fits(self.as_str(), code)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    pub deadline: Duration,
    pub poll: Duration,
}

impl Payments {
    /// Takes a payment with the buyer's code or face. Returns the payment once it is paid,
    /// refused, or has waited `inline`; a payment still waiting then goes on being polled in the
    /// background until it is paid or its deadline cancels it.
    pub async fn pay(
        &self,
        trade: NewTrade,
        scene: Scene,
        auth_code: &str,
        inline: Duration,
    ) -> Result<Payment, Error> {
        if !scene.fits(auth_code) {
            return Err(Error::Invalid {
                field: "auth_code",
                message: match scene {
                    Scene::BarCode => "a payment code is 16 to 24 digits starting with 25 to 30",
                    Scene::Face => "a face-pay token starts with fp",
                }
                .into(),
            });
        }
        let deadline =
            chrono::Duration::from_std(self.waiting.deadline).unwrap_or(chrono::Duration::MAX);
        let Opened {
            id,
            app,
            mut biz,
            options,
        } = self.open_trade(&trade, scene.as_str(), deadline).await?;
        biz["scene"] = json!(scene.as_str());
        biz["auth_code"] = json!(auth_code);
        let payment = self.get(&id).await?;
        match self
            .alipay
            .call(&app, "alipay.trade.pay", Some(&biz), &options)
            .await
        {
            Ok(answer) => {
                // A pay answer names the buyer as a query's does, and its payment time
                // `gmt_payment`.
                let mut facts = facts_of_answer(&answer);
                facts.paid_at = text(&answer, "gmt_payment")
                    .and_then(|t| super::trades::beijing(&t))
                    .or(facts.paid_at);
                self.transition(&payment, Status::Succeeded, &facts).await?;
                return self.get(&id).await;
            }
            Err(crate::alipay::Error::Gateway(g)) if g.kind == GatewayErrorKind::InProcess => {
                // The buyer is confirming: the trade exists and waits.
                self.transition(&payment, Status::Waiting, &Facts::default())
                    .await?;
            }
            Err(crate::alipay::Error::Gateway(g))
                if g.kind != GatewayErrorKind::ServiceUnavailable =>
            {
                // Refused (a used code, no balance…): Alipay holds no payment.
                return Err(self.refused(&id, g).await);
            }
            // Unknown outcome (20000, a lost answer): find out by asking, as for 10003.
            Err(_) => {}
        }
        let settled = tokio::time::timeout(inline, self.settle(&id)).await;
        if settled.is_err() {
            // Still waiting: polled on until paid or cancelled at the deadline.
            let payments = self.clone();
            let background = id.clone();
            tokio::spawn(async move {
                if let Err(error) = payments.settle(&background).await {
                    tracing::warn!(payment = %background, %error, "a code payment could not be settled; reconciliation will");
                }
            });
        }
        self.get(&id).await
    }

    /// Polls a code payment until it is paid or closed; at its deadline cancels it.
    async fn settle(&self, id: &str) -> Result<(), Error> {
        loop {
            let payment = self.get(id).await?;
            if payment.status().is_final() || payment.status() == Status::Succeeded {
                return Ok(());
            }
            let payment = match self.query(&payment).await {
                Ok(p) => p,
                Err(error) => {
                    tracing::info!(payment = %id, %error, "polling a code payment failed; trying again");
                    payment
                }
            };
            if matches!(
                payment.status(),
                Status::Succeeded | Status::Finished | Status::Closed
            ) {
                return Ok(());
            }
            let expired = payment
                .expires_at
                .is_some_and(|at| crate::db::sql::from_millis(at) <= self.now());
            if expired {
                return self.cancel(&payment).await;
            }
            tokio::time::sleep(self.waiting.poll).await;
        }
    }

    /// `alipay.trade.cancel`: closes an unpaid trade, or refunds in full one paid meanwhile (the
    /// buyer confirmed too late); then asks where it stands and applies that.
    pub(super) async fn cancel(&self, payment: &Payment) -> Result<(), Error> {
        match self.ask(payment, "alipay.trade.cancel").await? {
            Ok(answer) => {
                if answer["action"] == "refund" {
                    tracing::warn!(payment = %payment.id, "a code payment paid after its deadline was cancelled and refunded");
                }
                self.transition(payment, Status::Closed, &Facts::default())
                    .await?;
                Ok(())
            }
            Err(crate::alipay::Error::Gateway(g))
                if g.sub_code.as_deref() == Some("ACQ.TRADE_NOT_EXIST") =>
            {
                self.transition(payment, Status::Closed, &Facts::default())
                    .await?;
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_alipays_names_and_check_their_codes() {
        assert_eq!(Scene::parse("security_code"), Some(Scene::Face));
        assert_eq!(Scene::parse("wave_code"), None);
        assert!(Scene::BarCode.fits("280000000000000001"));
        assert!(!Scene::Face.fits("280000000000000001"));
    }
}

//! alipay.offline.material.image.upload, and the rules a card template's images follow.
//!
//! Invariant: an image id names bytes this app uploaded whose real format and size were read
//! from the bytes themselves, so a template's logo and background are checked against what was
//! uploaded, not against what the uploader claimed.
//!
//! Sources: the upload's fields and 5 MB limit — `AlipayOfflineMaterialImageUploadRequest`
//! (alipay-sdk-java-all) and Alipay's image-upload page; the logo (square, at least 500×500,
//! at most 1 MB) and background (at least 1020×643, at most 2 MB) — `TemplateStyleInfoDTO`
//! (alipay-sdk-java-all `logo_id`, `background_id`).

use std::collections::BTreeMap;

use serde_json::json;

use crate::Sandbox;
use crate::gateway::{Files, GatewayFailure, Outcome, busy, fail, missing};
use crate::schema::Fields;

/// The formats a card image may have (`image_type`), with the media types a file part of each
/// may declare.
const FORMATS: &[(&str, &[&str])] = &[
    ("jpg", &["image/jpeg", "image/jpg"]),
    ("jpeg", &["image/jpeg", "image/jpg"]),
    ("png", &["image/png"]),
    ("gif", &["image/gif"]),
    ("bmp", &["image/bmp", "image/x-ms-bmp"]),
];
const MAX_UPLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Where a template shows an image.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Use {
    Logo,
    Background,
    /// A level's icon or another small image: any uploaded image of the app.
    Icon,
}

impl Sandbox {
    pub(crate) async fn image_upload(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        files: &Files,
    ) -> Outcome {
        let kind = p
            .get("image_type")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("image_type"))?;
        let Some((_, media_types)) = FORMATS.iter().find(|(f, _)| f == kind) else {
            return Err(fail(
                "40002",
                "isv.invalid-parameter",
                "image_type 仅支持 jpg、jpeg、png、gif、bmp（小写）",
            ));
        };
        let name = p
            .get("image_name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("image_name"))?;
        if name.chars().count() > 128 {
            return Err(fail(
                "40002",
                "isv.invalid-parameter",
                "image_name 长度不能超过 128",
            ));
        }
        let (file_name, media_type, content) = files
            .get("image_content")
            .filter(|(_, _, c)| !c.is_empty())
            .ok_or_else(|| missing("image_content"))?;
        if content.len() > MAX_UPLOAD_BYTES {
            return Err(fail(
                "40002",
                "isv.invalid-file-size",
                "文件大小不能超过 5M",
            ));
        }
        let extension = file_name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let same_format = |e: &str| e == kind || (is_jpeg(e) && is_jpeg(kind));
        if !same_format(&extension) || !media_types.contains(&media_type.as_str()) {
            return Err(fail(
                "40002",
                "isv.invalid-file-extension",
                format!("文件 {file_name}（{media_type}）与 image_type {kind} 不符"),
            ));
        }
        let (format, width, height) = read_image(content).ok_or_else(|| {
            fail(
                "40002",
                "isv.invalid-file-extension",
                "文件不是可识别的图片",
            )
        })?;
        if !same_format(format) {
            return Err(fail(
                "40002",
                "isv.invalid-file-extension",
                format!("文件内容是 {format}，与 image_type {kind} 不符"),
            ));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let image_id = format!("sbx{hex}");
        self.store()
            .put(
                "image",
                &format!("{app_id}:{image_id}"),
                &json!({ "name": name, "type": kind, "size": content.len(), "width": width, "height": height }),
            )
            .await
            .map_err(busy)?;
        Ok(
            json!({ "image_id": image_id, "image_url": format!("{}/images/{image_id}", self.inner.base_url) }),
        )
    }

    /// Checks that `fields.<key>` names an image this app uploaded that suits `usage`.
    pub(crate) async fn check_image(
        &self,
        app_id: &str,
        fields: &Fields<'_>,
        key: &str,
        usage: Use,
    ) -> Result<(), GatewayFailure> {
        let Some(id) = fields.optional_text(key, 1000)? else {
            return Ok(());
        };
        let Some(image) = self
            .store()
            .get("image", &format!("{app_id}:{id}"))
            .await
            .map_err(busy)?
        else {
            return Err(fields.invalid(
                key,
                "须为本应用通过 alipay.offline.material.image.upload 上传的图片 id",
            ));
        };
        let size = image["size"].as_u64().unwrap_or(u64::MAX);
        let (w, h) = (
            image["width"].as_u64().unwrap_or(0),
            image["height"].as_u64().unwrap_or(0),
        );
        let problem = match usage {
            Use::Logo if size > 1024 * 1024 => Some("logo 不能超过 1M"),
            Use::Logo if w != h || w < 500 => Some("logo 须为正方形且不小于 500×500"),
            Use::Background if size > 2 * 1024 * 1024 => Some("背景图不能超过 2M"),
            Use::Background if w < 1020 || h < 643 => Some("背景图不能小于 1020×643"),
            _ => None,
        };
        match problem {
            Some(why) => Err(fields.invalid(key, why)),
            None => Ok(()),
        }
    }
}

fn is_jpeg(format: &str) -> bool {
    format == "jpg" || format == "jpeg"
}

/// The format (as `image_type` names it) and dimensions read from an image's header.
pub(crate) fn read_image(bytes: &[u8]) -> Option<(&'static str, usize, usize)> {
    let format = match imagesize::image_type(bytes).ok()? {
        imagesize::ImageType::Jpeg => "jpg",
        imagesize::ImageType::Png => "png",
        imagesize::ImageType::Gif => "gif",
        imagesize::ImageType::Bmp => "bmp",
        _ => return None,
    };
    let size = imagesize::blob_size(bytes).ok()?;
    Some((format, size.width, size.height))
}

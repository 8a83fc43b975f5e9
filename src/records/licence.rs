//! Licences a record may carry, their names and URLs for attribution, and the Creative Commons
//! adapter's rules that decide which licence an adaptation may use.

use cid::Cid;

use super::error::RecordError;

/// The Creative Commons licence elements, CC0 included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CcElements {
    Zero,
    By,
    BySa,
    ByNc,
    ByNcSa,
    ByNd,
    ByNcNd,
}

impl CcElements {
    const WITH_ATTRIBUTION: [CcElements; 6] = [
        CcElements::By,
        CcElements::BySa,
        CcElements::ByNc,
        CcElements::ByNcSa,
        CcElements::ByNd,
        CcElements::ByNcNd,
    ];

    /// The elements as they appear in SPDX ids and licence names, e.g. `BY-NC-SA`.
    fn code(self) -> &'static str {
        match self {
            CcElements::Zero => "0",
            CcElements::By => "BY",
            CcElements::BySa => "BY-SA",
            CcElements::ByNc => "BY-NC",
            CcElements::ByNcSa => "BY-NC-SA",
            CcElements::ByNd => "BY-ND",
            CcElements::ByNcNd => "BY-NC-ND",
        }
    }

    pub fn is_non_commercial(self) -> bool {
        matches!(
            self,
            CcElements::ByNc | CcElements::ByNcSa | CcElements::ByNcNd
        )
    }

    pub fn is_no_derivatives(self) -> bool {
        matches!(self, CcElements::ByNd | CcElements::ByNcNd)
    }

    pub fn is_share_alike(self) -> bool {
        matches!(self, CcElements::BySa | CcElements::ByNcSa)
    }
}

/// A licence version. The 3.0 IGO ports count as version 3.0 when versions are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CcVersion {
    V1_0,
    V3_0,
    V3_0Igo,
    V4_0,
}

impl CcVersion {
    /// The number compared by the share-alike "same or later version" rule.
    pub fn rank(self) -> u8 {
        match self {
            CcVersion::V1_0 => 1,
            CcVersion::V3_0 | CcVersion::V3_0Igo => 3,
            CcVersion::V4_0 => 4,
        }
    }
}

/// One of the Creative Commons licences oermesh accepts by SPDX id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CcLicence {
    pub elements: CcElements,
    pub version: CcVersion,
}

impl CcLicence {
    /// Every accepted Creative Commons licence.
    pub fn all() -> Vec<CcLicence> {
        let mut all = vec![CcLicence {
            elements: CcElements::Zero,
            version: CcVersion::V1_0,
        }];
        for version in [CcVersion::V4_0, CcVersion::V3_0, CcVersion::V3_0Igo] {
            for elements in CcElements::WITH_ATTRIBUTION {
                all.push(CcLicence { elements, version });
            }
        }
        all
    }

    pub fn spdx_id(self) -> String {
        match (self.elements, self.version) {
            (CcElements::Zero, _) => "CC0-1.0".into(),
            (elements, CcVersion::V3_0Igo) => format!("CC-{}-3.0-IGO", elements.code()),
            (elements, CcVersion::V3_0) => format!("CC-{}-3.0", elements.code()),
            (elements, _) => format!("CC-{}-4.0", elements.code()),
        }
    }

    /// The short name Creative Commons uses in attributions, e.g. `CC BY-SA 3.0 IGO`.
    pub fn name(self) -> String {
        match (self.elements, self.version) {
            (CcElements::Zero, _) => "CC0 1.0".into(),
            (elements, CcVersion::V3_0Igo) => format!("CC {} 3.0 IGO", elements.code()),
            (elements, CcVersion::V3_0) => format!("CC {} 3.0", elements.code()),
            (elements, _) => format!("CC {} 4.0", elements.code()),
        }
    }

    /// The canonical deed URL.
    pub fn url(self) -> String {
        let path = self.elements.code().to_ascii_lowercase();
        match (self.elements, self.version) {
            (CcElements::Zero, _) => "https://creativecommons.org/publicdomain/zero/1.0/".into(),
            (_, CcVersion::V3_0Igo) => {
                format!("https://creativecommons.org/licenses/{path}/3.0/igo/")
            }
            (_, CcVersion::V3_0) => format!("https://creativecommons.org/licenses/{path}/3.0/"),
            (_, _) => format!("https://creativecommons.org/licenses/{path}/4.0/"),
        }
    }

    fn from_spdx_id(id: &str) -> Option<CcLicence> {
        CcLicence::all()
            .into_iter()
            .find(|licence| licence.spdx_id() == id)
    }
}

/// A record's licence: a known Creative Commons licence, or a custom `LicenseRef-...` with the
/// URL of its terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Licence {
    Cc(CcLicence),
    Custom { id: String, url: String },
}

const LICENSE_REF_PREFIX: &str = "LicenseRef-";

impl Licence {
    /// Parses the licence fields of a record: an SPDX id and, only for `LicenseRef-...`, a URL.
    /// The URL's syntax is checked by the record validation.
    pub fn parse(id: &str, url: Option<&str>) -> Result<Licence, RecordError> {
        if let Some(licence) = CcLicence::from_spdx_id(id) {
            return match url {
                None => Ok(Licence::Cc(licence)),
                Some(_) => Err(RecordError::LicenceUrlNotAllowed(id.to_string())),
            };
        }
        let is_license_ref = id.strip_prefix(LICENSE_REF_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        });
        if !is_license_ref {
            return Err(RecordError::UnknownLicence(id.to_string()));
        }
        match url {
            Some(url) => Ok(Licence::Custom {
                id: id.to_string(),
                url: url.to_string(),
            }),
            None => Err(RecordError::LicenceUrlMissing(id.to_string())),
        }
    }

    pub fn spdx_id(&self) -> String {
        match self {
            Licence::Cc(cc) => cc.spdx_id(),
            Licence::Custom { id, .. } => id.clone(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Licence::Cc(cc) => cc.name(),
            Licence::Custom { id, .. } => id.clone(),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Licence::Cc(cc) => cc.url(),
            Licence::Custom { url, .. } => url.clone(),
        }
    }

    /// How an attribution line states the licence, e.g.
    /// `licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)`.
    pub fn attribution_phrase(&self) -> String {
        let verb = match self {
            Licence::Cc(CcLicence {
                elements: CcElements::Zero,
                ..
            }) => "marked with",
            _ => "licensed under",
        };
        format!("{verb} {} ({})", self.name(), self.url())
    }
}

/// A parent work as the compatibility check sees it.
#[derive(Debug, Clone)]
pub struct ParentWork {
    pub cid: Cid,
    pub title: String,
    pub licence: Licence,
}

/// Which adapter's rule an adaptation would break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictRule {
    /// ND works may not be adapted and shared at all.
    NoDerivatives,
    /// BY-SA: the adaptation must use BY-SA of the same or a later version.
    ShareAlike { minimum_version: u8 },
    /// BY-NC-SA: the adaptation must use BY-NC-SA of the same or a later version.
    NonCommercialShareAlike { minimum_version: u8 },
    /// BY-NC: the adaptation must keep the NC element.
    NonCommercial,
    /// A BY-SA parent needs a BY-SA adaptation, an NC parent an NC one: no licence does both.
    ShareAlikeWithNonCommercial {
        non_commercial_parent: Cid,
        non_commercial_title: String,
    },
    /// A custom licence's terms cannot be checked; only the identical licence is carried forward.
    CustomLicence,
}

impl std::fmt::Display for ConflictRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConflictRule::NoDerivatives => {
                f.write_str("NoDerivatives (ND) works may not be adapted; share the original unchanged instead")
            }
            ConflictRule::ShareAlike { minimum_version } => write!(
                f,
                "ShareAlike: an adaptation of a BY-SA work must be licensed under CC BY-SA {minimum_version}.0 or a later version"
            ),
            ConflictRule::NonCommercialShareAlike { minimum_version } => write!(
                f,
                "ShareAlike: an adaptation of a BY-NC-SA work must be licensed under CC BY-NC-SA {minimum_version}.0 or a later version"
            ),
            ConflictRule::NonCommercial => {
                f.write_str("NonCommercial: an adaptation of a BY-NC work must carry an NC licence (BY-NC, BY-NC-SA or BY-NC-ND)")
            }
            ConflictRule::ShareAlikeWithNonCommercial { non_commercial_parent, non_commercial_title } => write!(
                f,
                "a BY-SA work cannot be combined with the NonCommercial work \u{201c}{non_commercial_title}\u{201d} ({non_commercial_parent}): \
                 BY-SA requires a BY-SA adaptation, NC requires an NC one"
            ),
            ConflictRule::CustomLicence => f.write_str(
                "custom licence: oermesh cannot check its terms, so an adaptation must carry the identical LicenseRef and URL",
            ),
        }
    }
}

/// An adaptation refused because of one parent's licence.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "licence {child_licence} is not allowed for an adaptation of \u{201c}{parent_title}\u{201d} ({parent}, {parent_licence}): {rule}"
)]
pub struct LicenceConflict {
    pub parent: Cid,
    pub parent_title: String,
    pub parent_licence: String,
    pub child_licence: String,
    pub rule: ConflictRule,
}

/// Something a signer should hear about even though the adaptation is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceWarning {
    pub parent: Cid,
    pub message: String,
}

/// Checks that an adaptation of `parents` may be licensed under `child`. On success, returns
/// warnings about parents whose terms oermesh could not check.
pub fn check_adaptation(
    child: &Licence,
    parents: &[ParentWork],
) -> Result<Vec<LicenceWarning>, Box<LicenceConflict>> {
    let conflict = |parent: &ParentWork, rule| {
        Box::new(LicenceConflict {
            parent: parent.cid,
            parent_title: parent.title.clone(),
            parent_licence: parent.licence.spdx_id(),
            child_licence: child.spdx_id(),
            rule,
        })
    };
    let cc_of = |parent: &ParentWork| match &parent.licence {
        Licence::Cc(cc) => Some(*cc),
        Licence::Custom { .. } => None,
    };

    if let Some(parent) = parents
        .iter()
        .find(|p| cc_of(p).is_some_and(|cc| cc.elements.is_no_derivatives()))
    {
        return Err(conflict(parent, ConflictRule::NoDerivatives));
    }
    let share_alike_parent = parents
        .iter()
        .find(|p| cc_of(p).is_some_and(|cc| cc.elements == CcElements::BySa));
    let non_commercial_parent = parents
        .iter()
        .find(|p| cc_of(p).is_some_and(|cc| cc.elements.is_non_commercial()));
    if let (Some(sa), Some(nc)) = (share_alike_parent, non_commercial_parent) {
        let rule = ConflictRule::ShareAlikeWithNonCommercial {
            non_commercial_parent: nc.cid,
            non_commercial_title: nc.title.clone(),
        };
        return Err(conflict(sa, rule));
    }

    let child_cc = match child {
        Licence::Cc(cc) => Some(*cc),
        Licence::Custom { .. } => None,
    };
    let mut warnings = Vec::new();
    for parent in parents {
        let Some(parent_cc) = cc_of(parent) else {
            if *child != parent.licence {
                return Err(conflict(parent, ConflictRule::CustomLicence));
            }
            warnings.push(LicenceWarning {
                parent: parent.cid,
                message: format!(
                    "\u{201c}{}\u{201d} uses the custom licence {} ({}); check yourself that its terms allow this adaptation",
                    parent.title,
                    parent.licence.spdx_id(),
                    parent.licence.url()
                ),
            });
            continue;
        };
        let minimum_version = parent_cc.version.rank();
        let same_elements_and_not_older = |elements| {
            child_cc.is_some_and(|c| c.elements == elements && c.version.rank() >= minimum_version)
        };
        match parent_cc.elements {
            CcElements::Zero | CcElements::By => {}
            CcElements::BySa => {
                if !same_elements_and_not_older(CcElements::BySa) {
                    return Err(conflict(
                        parent,
                        ConflictRule::ShareAlike { minimum_version },
                    ));
                }
            }
            CcElements::ByNcSa => {
                if !same_elements_and_not_older(CcElements::ByNcSa) {
                    return Err(conflict(
                        parent,
                        ConflictRule::NonCommercialShareAlike { minimum_version },
                    ));
                }
            }
            CcElements::ByNc => {
                if !child_cc.is_some_and(|c| c.elements.is_non_commercial()) {
                    return Err(conflict(parent, ConflictRule::NonCommercial));
                }
            }
            CcElements::ByNd | CcElements::ByNcNd => {
                return Err(conflict(parent, ConflictRule::NoDerivatives))
            }
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec};

    fn parent(id: &str) -> ParentWork {
        let url = id
            .starts_with("LicenseRef-")
            .then_some("https://example.org/terms");
        ParentWork {
            cid: cid_v1(codec::DAG_CBOR, id.as_bytes()),
            title: format!("work under {id}"),
            licence: licence(id, url),
        }
    }

    fn licence(id: &str, url: Option<&str>) -> Licence {
        Licence::parse(id, url).unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    fn allowed(child: &str, parents: &[&str]) -> bool {
        let parents: Vec<_> = parents.iter().map(|p| parent(p)).collect();
        let url = child
            .starts_with("LicenseRef-")
            .then_some("https://example.org/terms");
        check_adaptation(&licence(child, url), &parents).is_ok()
    }

    #[test]
    fn accepted_ids_names_and_urls() {
        assert_eq!(CcLicence::all().len(), 19);
        let igo = licence("CC-BY-SA-3.0-IGO", None);
        assert_eq!(igo.name(), "CC BY-SA 3.0 IGO");
        assert_eq!(
            igo.url(),
            "https://creativecommons.org/licenses/by-sa/3.0/igo/"
        );
        assert_eq!(
            licence("CC-BY-NC-ND-4.0", None).url(),
            "https://creativecommons.org/licenses/by-nc-nd/4.0/"
        );
        assert_eq!(
            licence("CC0-1.0", None).url(),
            "https://creativecommons.org/publicdomain/zero/1.0/"
        );
        assert!(matches!(
            Licence::parse("MIT", None),
            Err(RecordError::UnknownLicence(_))
        ));
        assert!(matches!(
            Licence::parse("CC-BY-2.0", None),
            Err(RecordError::UnknownLicence(_))
        ));
        assert!(matches!(
            Licence::parse("LicenseRef-Mine", None),
            Err(RecordError::LicenceUrlMissing(_))
        ));
        assert!(matches!(
            Licence::parse("CC-BY-4.0", Some("https://x")),
            Err(RecordError::LicenceUrlNotAllowed(_))
        ));
    }

    #[test]
    fn adapter_rules() {
        assert!(allowed("CC-BY-NC-ND-4.0", &["CC0-1.0", "CC-BY-4.0"]));
        assert!(!allowed("CC-BY-4.0", &["CC-BY-ND-4.0"]));
        assert!(!allowed("CC-BY-NC-ND-4.0", &["CC-BY-NC-ND-3.0-IGO"]));
        assert!(allowed("CC-BY-SA-4.0", &["CC-BY-SA-3.0"]));
        assert!(allowed("CC-BY-SA-3.0", &["CC-BY-SA-3.0-IGO"]));
        assert!(allowed("CC-BY-SA-3.0-IGO", &["CC-BY-SA-3.0"]));
        assert!(!allowed("CC-BY-SA-3.0", &["CC-BY-SA-4.0"]));
        assert!(!allowed("CC-BY-4.0", &["CC-BY-SA-4.0"]));
        assert!(allowed("CC-BY-NC-4.0", &["CC-BY-NC-4.0"]));
        assert!(allowed("CC-BY-NC-SA-4.0", &["CC-BY-NC-3.0"]));
        assert!(allowed("CC-BY-NC-ND-4.0", &["CC-BY-NC-4.0"]));
        assert!(!allowed("CC-BY-4.0", &["CC-BY-NC-4.0"]));
        assert!(allowed("CC-BY-NC-SA-4.0", &["CC-BY-NC-SA-3.0-IGO"]));
        assert!(!allowed("CC-BY-NC-4.0", &["CC-BY-NC-SA-4.0"]));
        assert!(allowed("CC-BY-SA-4.0", &["CC-BY-4.0", "CC-BY-SA-4.0"]));
        assert!(allowed("CC-BY-NC-4.0", &["CC-BY-4.0", "CC-BY-NC-4.0"]));
        assert!(!allowed(
            "CC-BY-NC-SA-4.0",
            &["CC-BY-SA-4.0", "CC-BY-NC-4.0"]
        ));
        assert!(!allowed(
            "CC-BY-SA-4.0",
            &["CC-BY-SA-4.0", "CC-BY-NC-SA-4.0"]
        ));
        assert!(allowed("LicenseRef-Mine", &["CC-BY-4.0"]));
        assert!(!allowed("LicenseRef-Mine", &["CC-BY-NC-4.0"]));
        assert!(!allowed("CC-BY-4.0", &["LicenseRef-Mine"]));
        assert!(allowed("LicenseRef-Mine", &["LicenseRef-Mine"]));
    }

    #[test]
    fn conflict_names_parent_and_rule() {
        let nd = parent("CC-BY-ND-4.0");
        let refused = check_adaptation(&licence("CC-BY-4.0", None), std::slice::from_ref(&nd));
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&nd.cid.to_string()), "{message}");
        assert!(message.contains(&nd.title), "{message}");
        assert!(message.contains("NoDerivatives"), "{message}");

        let mixed = [parent("CC-BY-SA-4.0"), parent("CC-BY-NC-4.0")];
        let refused = check_adaptation(&licence("CC-BY-SA-4.0", None), &mixed).err();
        assert!(matches!(
            refused.map(|c| c.rule),
            Some(ConflictRule::ShareAlikeWithNonCommercial { .. })
        ));
    }
}

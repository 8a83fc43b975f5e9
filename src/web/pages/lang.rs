//! Languages of records on the page: each record's text carries its own `lang` and
//! `dir`, so screen readers speak it in the right voice and right-to-left scripts run
//! the right way, while the page around it stays in English.

/// Primary language subtags of languages written right to left.
const RTL_LANGUAGES: &[&str] = &[
    "ar", "arc", "ckb", "dv", "fa", "he", "iw", "ks", "ku-arab", "nqo", "ps", "sd", "syr", "ug",
    "ur", "yi",
];
/// Script subtags of right-to-left scripts.
const RTL_SCRIPTS: &[&str] = &[
    "adlm", "arab", "hebr", "mand", "nkoo", "rohg", "samr", "syrc", "thaa",
];

/// `rtl` or `ltr` for a BCP 47 language tag (a script subtag decides over the language).
pub fn direction(tag: &str) -> &'static str {
    let lower = tag.to_ascii_lowercase();
    let mut subtags = lower.split('-');
    let primary = subtags.next().unwrap_or_default();
    for subtag in subtags {
        if subtag.len() == 4 {
            return if RTL_SCRIPTS.contains(&subtag) {
                "rtl"
            } else {
                "ltr"
            };
        }
    }
    if RTL_LANGUAGES.contains(&primary) {
        "rtl"
    } else {
        "ltr"
    }
}

/// `lang` attribute value: the record's tag, or `und` when it has none.
pub fn lang_attr(tag: &str) -> &str {
    if tag.is_empty() {
        "und"
    } else {
        tag
    }
}

/// English names and autonyms of languages common in open educational resources.
const NAMES: &[(&str, &str, &str)] = &[
    ("am", "Amharic", "አማርኛ"),
    ("ar", "Arabic", "العربية"),
    ("bn", "Bengali", "বাংলা"),
    ("de", "German", "Deutsch"),
    ("en", "English", "English"),
    ("es", "Spanish", "Español"),
    ("fa", "Persian", "فارسی"),
    ("fil", "Filipino", "Filipino"),
    ("fr", "French", "Français"),
    ("ha", "Hausa", "Hausa"),
    ("he", "Hebrew", "עברית"),
    ("hi", "Hindi", "हिन्दी"),
    ("id", "Indonesian", "Bahasa Indonesia"),
    ("ig", "Igbo", "Igbo"),
    ("it", "Italian", "Italiano"),
    ("ja", "Japanese", "日本語"),
    ("km", "Khmer", "ខ្មែរ"),
    ("ko", "Korean", "한국어"),
    ("lo", "Lao", "ລາວ"),
    ("mr", "Marathi", "मराठी"),
    ("ms", "Malay", "Bahasa Melayu"),
    ("my", "Burmese", "မြန်မာ"),
    ("ne", "Nepali", "नेपाली"),
    ("nl", "Dutch", "Nederlands"),
    ("pl", "Polish", "Polski"),
    ("ps", "Pashto", "پښتو"),
    ("pt", "Portuguese", "Português"),
    ("ru", "Russian", "Русский"),
    ("rw", "Kinyarwanda", "Ikinyarwanda"),
    ("so", "Somali", "Soomaali"),
    ("sw", "Swahili", "Kiswahili"),
    ("ta", "Tamil", "தமிழ்"),
    ("te", "Telugu", "తెలుగు"),
    ("th", "Thai", "ไทย"),
    ("tr", "Turkish", "Türkçe"),
    ("uk", "Ukrainian", "Українська"),
    ("ur", "Urdu", "اردو"),
    ("vi", "Vietnamese", "Tiếng Việt"),
    ("yo", "Yoruba", "Yorùbá"),
    ("zh", "Chinese", "中文"),
    ("zu", "Zulu", "isiZulu"),
];

/// The English name and the autonym of a language tag's primary language, if known.
pub fn names(tag: &str) -> Option<(&'static str, &'static str)> {
    let primary = tag.split('-').next()?.to_ascii_lowercase();
    NAMES
        .iter()
        .find(|(code, _, _)| *code == primary)
        .map(|(_, english, own)| (*english, *own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_to_left_by_language_or_script() {
        for tag in ["ar", "ar-EG", "fa", "he", "ur-PK", "ps", "az-Arab", "AR"] {
            assert_eq!(direction(tag), "rtl", "{tag}");
        }
        for tag in ["en", "sw", "zh-Hans", "ar-Latn", "und", ""] {
            assert_eq!(direction(tag), "ltr", "{tag}");
        }
        assert_eq!(names("ar-EG"), Some(("Arabic", "العربية")));
        assert_eq!(names("xx"), None);
    }
}

//! Display text as clients send it: names of tenants, people, datasets and presets.

/// Display text of at most `max` characters as sent, parsed by `parse`: a schema's `maxLength`
/// counts what is sent, so this does too; control and formatting characters are refused anywhere
/// in it, not only inside the trimmed text.
pub fn display_text<T, E: std::fmt::Display>(
    raw: &str,
    max: usize,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, String> {
    if raw.chars().count() > max {
        return Err(format!("at most {max} characters"));
    }
    if raw.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    }) {
        return Err("contains a control or formatting character".into());
    }
    parse(raw).map_err(|e| e.to_string())
}

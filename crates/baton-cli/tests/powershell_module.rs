//! Checks of the PowerShell module (`clients/powershell`) and the PowerShell snippets of the
//! docs that need no PowerShell, which cannot be installed on the machines that build baton:
//!
//! - no syntax that Windows PowerShell 5.1 cannot parse (`??`, `?.`, the ternary operator,
//!   `&&`/`||`) and no web-cmdlet parameter it lacks: the recipes once used `??`, which is a
//!   parse error in 5.1 (what Azure Automation runs);
//! - the manifest exports exactly the functions the module exports and defines;
//! - every API call the module makes is a method and path of the server's OpenAPI document.

mod harness;

use std::path::PathBuf;

use harness::Server;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("cannot read {relative}: {error}"))
}

/// The ```powershell blocks of a Markdown file.
fn powershell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```powershell") => current = Some(String::new()),
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The code of a PowerShell text with comments and the insides of string literals blanked
/// out, so that only operators and names are left to check. Good enough for these files: no
/// here-strings, no nested quotes of the other kind that matter.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_block_comment = false;
    while let Some(c) = chars.next() {
        if in_block_comment {
            if c == '#' && chars.peek() == Some(&'>') {
                chars.next();
                in_block_comment = false;
            }
            continue;
        }
        match c {
            '<' if chars.peek() == Some(&'#') => {
                chars.next();
                in_block_comment = true;
            }
            '#' => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '\'' | '"' => {
                out.push(c);
                for next in chars.by_ref() {
                    if next == c {
                        break;
                    }
                    if next == '\n' {
                        out.push('\n');
                    }
                }
                out.push(c);
            }
            other => out.push(other),
        }
    }
    out
}

/// What in `code` Windows PowerShell 5.1 cannot run.
fn incompatibilities(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (number, line) in code.lines().enumerate() {
        let mut problems = Vec::new();
        for token in ["??", "?.", "?[", "&&", "||"] {
            if line.contains(token) {
                problems.push(token.to_owned());
            }
        }
        // A lone `?` is the ternary operator unless it follows a pipe (the Where-Object alias).
        let bytes = line.as_bytes();
        for (index, byte) in bytes.iter().enumerate() {
            if *byte == b'?'
                && index > 0
                && bytes[index - 1] == b' '
                && bytes.get(index + 1) == Some(&b' ')
                && !line[..index].trim_end().ends_with('|')
            {
                problems.push("ternary ?:".to_owned());
            }
        }
        let lower = line.to_ascii_lowercase();
        for parameter in [
            "-skiphttperrorcheck",
            "-statuscodevariable",
            "-responseheadersvariable",
            "-skipcertificatecheck",
            "-authentication",
            "-ashashtable",
            "-parallel",
        ] {
            if lower.contains(parameter) {
                problems.push(parameter.to_owned());
            }
        }
        if lower.contains("convertfrom-json") && lower.contains("-depth") {
            problems.push("ConvertFrom-Json -Depth".to_owned());
        }
        for problem in problems {
            found.push(format!("line {}: {problem}: {}", number + 1, line.trim()));
        }
    }
    found
}

#[test]
fn powershell_code_parses_in_windows_powershell_5_1() {
    let mut sources: Vec<(String, String)> = vec![
        (
            "clients/powershell/Baton.psm1".to_owned(),
            read("clients/powershell/Baton.psm1"),
        ),
        (
            "clients/powershell/Baton.psd1".to_owned(),
            read("clients/powershell/Baton.psd1"),
        ),
    ];
    for document in [
        "docs/recipes.md",
        "README.md",
        "clients/powershell/README.md",
    ] {
        for (index, block) in powershell_blocks(&read(document)).into_iter().enumerate() {
            sources.push((
                format!("{document} (powershell block {})", index + 1),
                block,
            ));
        }
    }
    assert!(
        sources.len() >= 4,
        "the recipes' PowerShell blocks were not found"
    );
    let mut problems = Vec::new();
    for (name, text) in &sources {
        for problem in incompatibilities(&code_only(text)) {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        problems.is_empty(),
        "not Windows PowerShell 5.1:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_finds_what_the_recipes_once_had() {
    let old = "$B = $env:BATON_URL ?? 'http://127.0.0.1:7878'\n$x = $a ? 1 : 2\n$y = $a?.b\n";
    assert_eq!(incompatibilities(&code_only(old)).len(), 3);
    let fine = "$B = '??' # ?? in a comment\n$r | ? { $_.x }\n<# a ?? b #>\n";
    assert_eq!(incompatibilities(&code_only(fine)), Vec::<String>::new());
}

/// The names in a PowerShell list such as `@('A', 'B')` or `A, B` after `key`.
fn names_after(text: &str, key: &str) -> Vec<String> {
    let start = text.find(key).unwrap_or_else(|| panic!("{key} not found"));
    let rest = &text[start + key.len()..];
    let line = rest.lines().next().unwrap_or_default();
    let mut names: Vec<String> = line
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.contains('-'))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[test]
fn the_manifest_exports_what_the_module_defines() {
    let module = read("clients/powershell/Baton.psm1");
    let manifest = read("clients/powershell/Baton.psd1");
    let exported = names_after(&module, "Export-ModuleMember -Function");
    assert_eq!(
        exported,
        ["Get-BatonJob", "Get-BatonLock", "Invoke-BatonLock"],
        "the module's exports"
    );
    assert_eq!(names_after(&manifest, "FunctionsToExport"), exported);
    for name in &exported {
        assert!(
            module.contains(&format!("function {name} {{")),
            "{name} is exported but not defined"
        );
    }
    assert!(manifest.contains("RootModule           = 'Baton.psm1'"));
    assert!(manifest.contains("PowerShellVersion    = '5.1'"));
}

/// The (method, path template) of every `Invoke-BatonHttp` call in the module whose path is
/// written out; `$path` (the job list's query) is left to the caller.
fn module_calls(module: &str) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    for line in module.lines() {
        let Some(at) = line.find("Invoke-BatonHttp $") else {
            continue;
        };
        let rest = &line[at..];
        let Some(method) = ["'GET'", "'POST'", "'DELETE'"]
            .into_iter()
            .find(|method| rest.contains(method))
        else {
            continue;
        };
        let after = rest[rest.find(method).unwrap_or(0) + method.len()..].trim_start();
        let path = if let Some(literal) = after.strip_prefix('"') {
            let text = &literal[..literal.find('"').unwrap_or(literal.len())];
            placeholders_to_id(text)
        } else if let Some(literal) = after.strip_prefix('\'') {
            literal[..literal.find('\'').unwrap_or(literal.len())].to_owned()
        } else if after.starts_with("(Get-BatonLockPath $Name") {
            let suffix = after
                .split('\'')
                .nth(1)
                .filter(|_| after.contains("$Name '"))
                .unwrap_or("");
            format!("/v1/locks/{{name}}{suffix}")
        } else if after.starts_with("('/v1/jobs/' +") {
            "/v1/jobs/{id}".to_owned()
        } else {
            continue;
        };
        calls.push((method.trim_matches('\'').to_ascii_lowercase(), path));
    }
    calls
}

/// `/v1/tickets/$($ticket.id)/wait` and `/v1/leases/$leaseId/renew` → `…/{id}/…`.
fn placeholders_to_id(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'(') {
            let mut depth = 0;
            for next in chars.by_ref() {
                match next {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        } else {
            while chars
                .peek()
                .is_some_and(|next| next.is_ascii_alphanumeric())
            {
                chars.next();
            }
        }
        out.push_str("{id}");
    }
    out
}

#[tokio::test]
async fn every_call_of_the_module_is_in_the_openapi_document() {
    let calls = module_calls(&read("clients/powershell/Baton.psm1"));
    let expected = [
        ("post", "/v1/locks/{name}/acquire"),
        ("post", "/v1/tickets/{id}/wait"),
        ("delete", "/v1/tickets/{id}"),
        ("post", "/v1/leases/{id}/renew"),
        ("post", "/v1/leases/{id}/release"),
        ("get", "/v1/locks/{name}"),
        ("get", "/v1/locks"),
        ("get", "/v1/jobs/{id}"),
    ];
    for (method, path) in expected {
        assert!(
            calls.iter().any(|(m, p)| m == method && p == path),
            "the module should call {method} {path}; found {calls:?}"
        );
    }
    let server = Server::start(&[]).await;
    let (status, document) = server.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    for (method, path) in &calls {
        assert!(
            document["paths"][path.as_str()][method.as_str()].is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
    }
}

//! `raftlog completions SHELL` and `raftlog manpage`: generated from the clap definition
//! itself (clap_complete, clap_mangen), so they list exactly the subcommands and flags that
//! `--help` shows and cannot fall behind it.

use std::io::Write;

use clap::CommandFactory;

use super::{Cli, EXIT_FAILED};

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "raftlog", &mut out);
    write_stdout(&out, "completion script")
}

/// Prints the man page (roff) on stdout.
pub fn manpage() -> i32 {
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
        eprintln!("raftlog manpage: cannot render the man page: {e}");
        return EXIT_FAILED;
    }
    write_stdout(&out, "man page")
}

/// A closed pipe (`raftlog manpage | head`) is reported, not a panic as `print!` would.
fn write_stdout(bytes: &[u8], what: &str) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("raftlog: cannot write the {what} to stdout: {e}");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_completion_names_every_subcommand() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut command = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "raftlog", &mut out);
            let script = String::from_utf8(out).expect("completion scripts are UTF-8");
            for sub in Cli::command().get_subcommands() {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell} completion lacks subcommand {}",
                    sub.get_name()
                );
            }
            // fish spells a long flag `-l config`; bash and zsh `--config`.
            let config_flag = match shell {
                clap_complete::Shell::Fish => "-l config",
                _ => "--config",
            };
            assert!(
                script.contains(config_flag),
                "{shell} completion lacks {config_flag}"
            );
        }
    }

    #[test]
    fn man_page_documents_serve_and_its_flags() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .expect("rendering into a Vec cannot fail");
        let page = String::from_utf8(out).expect("roff is UTF-8");
        assert!(
            page.starts_with(".ie"),
            "not roff: {}",
            &page[..40.min(page.len())]
        );
        assert!(
            page.contains("raftlog"),
            "the page does not name the program"
        );
        assert!(page.contains("serve"), "the page does not list `serve`");
    }
}

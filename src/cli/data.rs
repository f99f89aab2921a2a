//! `ddexp data`: prepare, inspect and verify datasets.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};

use crate::{data, spec};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Download or read a corpus, tokenise it and write a dataset folder.
    #[command(subcommand)]
    Prepare(PrepareCommand),
    /// Show what a dataset folder holds.
    #[command(after_help = "Example:\n  ddexp data info data/text8")]
    Info { root: PathBuf },
    /// Check a dataset folder in full: sha256 of every split and every id against the vocabulary.
    #[command(after_help = "Example:\n  ddexp data verify data/openwebtext")]
    Verify { root: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum PrepareCommand {
    /// text8 (27 characters), split 90/5/5 exactly as nanoDD.
    #[command(
        after_help = "Examples:\n  ddexp data prepare text8\n  ddexp data prepare text8 --from ~/Downloads/text8.zip --root data/text8"
    )]
    Text8 {
        /// Dataset folder to write.
        #[arg(long, default_value = "data/text8")]
        root: PathBuf,
        /// Download text8.zip from this URL.
        #[arg(long, default_value = data::TEXT8_URL, conflicts_with = "from")]
        url: String,
        /// A local text8.zip or unzipped text8 file instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Replace an existing dataset in ROOT.
        #[arg(long)]
        force: bool,
    },
    /// OpenWebText in GPT-2 BPE, split by document.
    #[command(
        after_help = "Examples:\n  ddexp data prepare openwebtext\n  ddexp data prepare openwebtext --from ~/corpora/openwebtext-parquet/"
    )]
    Openwebtext {
        /// Dataset folder to write.
        #[arg(long, default_value = "data/openwebtext")]
        root: PathBuf,
        /// A folder of .parquet, .jsonl (field "text") or .txt files instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The Hugging Face hub (or a mirror) to download the parquet shards from.
        #[arg(long, default_value = data::HUB_URL, conflicts_with = "from")]
        hub_url: String,
        /// Replace an existing dataset in ROOT.
        #[arg(long)]
        force: bool,
    },
    /// A custom corpus, tokenised by characters or with GPT-2 BPE, split 90/5/5.
    #[command(
        after_help = "Example:\n  ddexp data prepare text --from shakespeare.txt --tokenizer char --root data/shakespeare"
    )]
    Text {
        /// Files (.parquet, .jsonl, anything else as plain text) or folders of them.
        #[arg(long, required = true, num_args = 1..)]
        from: Vec<PathBuf>,
        #[arg(long, value_enum)]
        tokenizer: TokenizerArg,
        /// Dataset folder to write.
        #[arg(long)]
        root: PathBuf,
        /// Replace an existing dataset in ROOT.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenizerArg {
    Char,
    Gpt2,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(prepare) => {
            let prepared = match prepare {
                PrepareCommand::Text8 {
                    root,
                    url,
                    from,
                    force,
                } => {
                    let source = match from {
                        Some(path) => data::Text8Source::File(path),
                        None => data::Text8Source::Url(url),
                    };
                    data::prepare_text8(&data::PrepareText8 {
                        root,
                        source,
                        force,
                    })?
                }
                PrepareCommand::Openwebtext {
                    root,
                    from,
                    hub_url,
                    force,
                } => {
                    let source = match from {
                        Some(dir) => data::OpenWebTextSource::Files(dir),
                        None => data::OpenWebTextSource::Hub { url: hub_url },
                    };
                    data::prepare_openwebtext(&data::PrepareOpenWebText {
                        root,
                        source,
                        force,
                    })?
                }
                PrepareCommand::Text {
                    from,
                    tokenizer,
                    root,
                    force,
                } => {
                    let tokenizer = match tokenizer {
                        TokenizerArg::Char => spec::Tokenizer::Char,
                        TokenizerArg::Gpt2 => spec::Tokenizer::Gpt2,
                    };
                    data::prepare_text(&data::PrepareText {
                        root,
                        from,
                        tokenizer,
                        force,
                    })?
                }
            };
            out!("{}", prepared.summary());
        }
        DataCommand::Info { root } => out!("{}", data::info(&root)?),
        DataCommand::Verify { root } => out!("{}", data::verify(&root)?),
    }
    Ok(())
}

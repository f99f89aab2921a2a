fn main() -> std::process::ExitCode {
    ddexp::cli::main()
}

fn main() {
    // Block SIGINT/SIGTERM before any thread exists, so that every thread
    // inherits the mask and the main thread alone receives them (sigwait).
    reactor::block_termination_signals();
    let code = strata::cli::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}

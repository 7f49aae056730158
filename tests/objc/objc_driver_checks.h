// objc_driver_checks.h - check counting shared by the tests/objc/test_objc_*_driver programs (included by each, header
// only). Every check counts; a failed one prints one line starting with "FAIL" (the Python side looks for it) and
// counts as a failure; main() ends with fa_checks_report().
#pragma once

#include <cstdio>
#include <string>

static int g_checks = 0, g_failures = 0;

// Counts the check `cond_text` at file:line; on failure prints "FAIL file:line: cond_text" and `detail` if any.
static inline void fa_check(bool ok, const char *file, int line, const char *cond_text, const std::string &detail = "") {
    ++g_checks;
    if (ok) return;
    ++g_failures;
    std::printf("FAIL %s:%d: %s%s%s\n", file, line, cond_text, detail.empty() ? "" : " - ", detail.c_str());
}

// "passed N of M checks"; returns the number of failures for the exit status.
static inline int fa_checks_report() {
    std::printf("passed %d of %d checks\n", g_checks - g_failures, g_checks);
    return g_failures;
}

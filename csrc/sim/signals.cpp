// signals.cpp - turns every synchronous signal a simulated thread can raise (SIGSEGV, SIGBUS, SIGFPE, SIGILL: a trap
// the compiler planted for undefined behaviour, SIGTRAP) and the watchdog's signal into a jump back to the worker's
// scheduler (the fault is then reported and the process goes on), and chains every other signal to the previous
// handler. Handlers run on the worker's alternate signal stack, so a fiber's stack overflow is caught too.
#include <dlfcn.h>

#include "scheduler.h"

namespace fasim {
namespace detail {

// " [pc: /path/module.so+0x1234]": the run-time compiled modules carry line tables that map it to the .metal line.
std::string pc_text(void *pc) {
    Dl_info info;
    if (!pc || !dladdr(pc, &info) || !info.dli_fname || !info.dli_fbase) return "";
    char b[64];
    snprintf(b, sizeof b, "+0x%lx]", (unsigned long)((char *)pc - (char *)info.dli_fbase));
    return std::string(" [pc: ") + info.dli_fname + b;
}

// The stack pointer and program counter saved in a signal's ucontext, by platform (both null where unknown).
struct SavedRegs {
    void *sp, *pc;
};
static SavedRegs saved_regs(void *uctx) {
    ucontext_t *uc = (ucontext_t *)uctx;
    (void)uc;
#if defined(__linux__) && defined(__x86_64__)
    return {(void *)uc->uc_mcontext.gregs[REG_RSP], (void *)uc->uc_mcontext.gregs[REG_RIP]};
#elif defined(__linux__) && defined(__aarch64__)
    return {(void *)uc->uc_mcontext.sp, (void *)uc->uc_mcontext.pc};
#elif defined(__APPLE__) && defined(__aarch64__)
    return {(void *)uc->uc_mcontext->__ss.__sp, (void *)uc->uc_mcontext->__ss.__pc};
#elif defined(__APPLE__) && defined(__x86_64__)
    return {(void *)uc->uc_mcontext->__ss.__rsp, (void *)uc->uc_mcontext->__ss.__rip};
#else
    return {nullptr, nullptr};
#endif
}

void *fault_sp(void *uctx) { return saved_regs(uctx).sp; }

void *fault_pc(void *uctx) { return saved_regs(uctx).pc; }

constexpr int kNumSignals = 6;
struct sigaction g_old[kNumSignals];
std::mutex g_sig_mu;
const int kSignals[kNumSignals] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, kWatchdogSignal};

void on_signal(int sig, siginfo_t *si, void *uctx) {
    Worker *w = tl_worker;
    if (w && w->in_fiber) {
        w->sig = sig;
        w->sig_addr = si->si_addr;
        w->sig_pc = fault_pc(uctx);
        w->sig_sp = fault_sp(uctx);
        w->sig_write = -1;
#if defined(__linux__) && defined(__x86_64__)
        if (sig == SIGSEGV) w->sig_write = (((ucontext_t *)uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#endif
        _longjmp(w->sched, 2);
    }
    if (w && sig == kWatchdogSignal) return;  // arrived between fibers: the watchdog asks again shortly
    // Not ours: chain to the previous handler. Each run-time compiled module has its own copy of this runtime, and
    // handlers may chain to each other; a second entry on this thread means a loop: fall back to the default.
    static thread_local int chain_depth = 0;
    if (chain_depth > 0) {
        signal(sig, SIG_DFL);
        return;
    }
    struct DepthGuard {
        DepthGuard() { chain_depth++; }
        ~DepthGuard() { chain_depth--; }
    } guard;
    for (int i = 0; i < kNumSignals; i++) {
        if (kSignals[i] != sig) continue;
        struct sigaction &o = g_old[i];
        if (o.sa_flags & SA_SIGINFO) {
            if (o.sa_sigaction) { o.sa_sigaction(sig, si, uctx); return; }
        } else if (o.sa_handler == SIG_IGN) {
            return;
        } else if (o.sa_handler != SIG_DFL && o.sa_handler) {
            o.sa_handler(sig);
            return;
        }
        sigaction(sig, &o, nullptr);  // default action: re-executing the faulting instruction now terminates
        return;
    }
}

// (Re)install our handler if someone (e.g. Python's faulthandler) replaced it; foreign faults chain to theirs.
void install_signal_handlers() {
    std::lock_guard<std::mutex> lk(g_sig_mu);
    for (int i = 0; i < kNumSignals; i++) {
        struct sigaction cur;
        sigaction(kSignals[i], nullptr, &cur);
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_signal) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(kSignals[i], &sa, &g_old[i]);
    }
}

}  // namespace detail
}  // namespace fasim

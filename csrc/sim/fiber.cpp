// fiber.cpp - see fiber.h.
// _FORTIFY_SOURCE turns longjmp into __longjmp_chk, which refuses to jump to another stack: switching fibers is
// exactly that, so it is disabled for this file.
#undef _FORTIFY_SOURCE
#if defined(__APPLE__) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700  // macOS hides the ucontext functions without it
#endif
#include "fiber.h"

#include "guarded.h"  // map_with_guards, host_page_size

#include <stdint.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

namespace fasim {

bool FiberStack::alloc(size_t usable) {
    if (map) return true;
    size_t page = host_page_size();
    usable = (usable + page - 1) / page * page;
    map_len = usable + page;
    map = map_with_guards(map_len, false, true);  // the stack grows down onto the guard page
    if (!map) return false;
    guard_end = map + page;
    return true;
}

void FiberStack::release() {
    if (map) munmap(map, map_len);
    map = nullptr;
}

namespace {
thread_local jmp_buf *tl_init_return = nullptr;

void fiber_trampoline(unsigned lo, unsigned hi) {
    Fiber *f = (Fiber *)(((uintptr_t)hi << 32) | (uintptr_t)lo);
    if (_setjmp(f->jb) == 0) _longjmp(*tl_init_return, 1);  // parked; the first resume continues below
    for (;;) {
        f->main(f);
        fiber_yield(f);  // main returned: park until the owner resumes us with new work
    }
}
}  // namespace

bool fiber_init(Fiber *f, FiberMain main, size_t stack_bytes) {
    if (!f->stack.alloc(stack_bytes)) return false;
    f->main = main;
    ucontext_t uc, back;
    getcontext(&uc);
    uc.uc_stack.ss_sp = f->stack.guard_end;
    uc.uc_stack.ss_size = f->stack.map_len - (size_t)(f->stack.guard_end - f->stack.map);
    uc.uc_link = nullptr;
    uintptr_t p = (uintptr_t)f;
    makecontext(&uc, (void (*)())fiber_trampoline, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
    jmp_buf here;
    tl_init_return = &here;
    if (_setjmp(here) == 0) swapcontext(&back, &uc);
    tl_init_return = nullptr;
    f->started = true;
    return true;
}

int fiber_resume(Fiber *f, jmp_buf *sched) {
    f->return_to = sched;
    int r = _setjmp(*sched);
    if (r == 0) _longjmp(f->jb, 1);
    return r;
}

void fiber_yield(Fiber *f) {
    if (_setjmp(f->jb) == 0) _longjmp(*f->return_to, 1);
}

}  // namespace fasim

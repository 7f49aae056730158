// fiber.h - user-space threads for the simulator: one fiber per simulated GPU thread.
//
// Creation uses makecontext (portable: Linux, macOS); switching uses _setjmp/_longjmp, which saves and restores only
// callee-saved registers and the stack pointer (no signal-mask syscall, unlike swapcontext). The first entry into a
// new fiber goes through swapcontext once; the fiber then parks itself with _setjmp and jumps back.
#pragma once

#include <setjmp.h>
#include <stddef.h>

namespace fasim {

struct Fiber;
typedef void (*FiberMain)(Fiber *);

struct FiberStack {
    char *map = nullptr;   // whole mapping; the lowest page is a PROT_NONE guard (stack overflow -> SIGSEGV)
    size_t map_len = 0;
    char *guard_end = nullptr;
    bool alloc(size_t usable);
    void release();
    bool in_guard(const void *p) const { return map && (const char *)p >= map && (const char *)p < guard_end; }
};

struct Fiber {
    jmp_buf jb;
    FiberStack stack;
    FiberMain main = nullptr;
    jmp_buf *return_to = nullptr;  // where a parked fiber jumps when it yields
    bool started = false;
};

// Prepares f to run main(f) on its stack; returns false if the stack cannot be allocated.
bool fiber_init(Fiber *f, FiberMain main, size_t stack_bytes);
// Switch from the scheduler (whose context is saved in *sched) into f. Returns the value passed to the jump back
// (1 = the fiber yielded, other values come from the signal handler).
int fiber_resume(Fiber *f, jmp_buf *sched);
// Called on f's own stack: save f and jump back to the scheduler.
void fiber_yield(Fiber *f);

}  // namespace fasim

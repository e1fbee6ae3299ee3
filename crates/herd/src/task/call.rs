//! Calling a plain function with a tuple of arguments.

/// A plain, non-capturing function that herd can run in a child process,
/// called with a tuple of its arguments: `fn(A, B) -> R` is a `TaskFn<(A, B)>`.
///
/// Implemented for every `Fn` of up to eight arguments that is `Copy`,
/// `Send` and `'static`; herd additionally requires the function to be
/// registered with [`#[herd::task]`](crate::task) so that the child can find
/// it by name.
pub trait TaskFn<Args>: Copy + Send + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with its arguments spread out.
    fn call(self, args: Args) -> Self::Output;
}

macro_rules! impl_task_fn {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg,)*> TaskFn<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + 'static,
        {
            type Output = Ret;
            #[expect(non_snake_case, reason = "argument names come from the type parameters")]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}

macro_rules! impl_task_fn_unit {
    () => {
        impl<Func, Ret> TaskFn<()> for Func
        where
            Func: Fn() -> Ret + Copy + Send + 'static,
        {
            type Output = Ret;
            fn call(self, (): ()) -> Ret {
                self()
            }
        }
    };
}

impl_task_fn_unit!();
impl_task_fn!(A1);
impl_task_fn!(A1, A2);
impl_task_fn!(A1, A2, A3);
impl_task_fn!(A1, A2, A3, A4);
impl_task_fn!(A1, A2, A3, A4, A5);
impl_task_fn!(A1, A2, A3, A4, A5, A6);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8);

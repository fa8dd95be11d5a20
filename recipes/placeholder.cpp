// Placeholder translation unit until the objectives land.

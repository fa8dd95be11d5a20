// Placeholder translation unit until the distributed sources land.

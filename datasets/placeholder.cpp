// Placeholder translation unit until the dataset sources land.

"""Model loading (packaged, local folder, offline hub cache, tiny test model) and numerics flags."""

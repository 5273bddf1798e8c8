"""Operations: metrics, the admin listener, logging."""

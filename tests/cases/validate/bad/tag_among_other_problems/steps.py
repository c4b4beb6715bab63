def exists(ctx, record):
    return None


def create(ctx, record, *, limit=10):
    return record


class Loader:
    pass

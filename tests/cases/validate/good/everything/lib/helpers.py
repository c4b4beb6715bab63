def check(ctx, record: dict):
    return None

def no_ctx():
    return None


def too_many(ctx, record, extra):
    return None


def needs_keyword(ctx, *, limit):
    return limit

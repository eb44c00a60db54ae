"""Stage 6, predict: score new series with the champion, with saliency maps."""

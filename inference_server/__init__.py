"""inference_server"""
